"""The router: OpenAI-compatible HTTP front end and conductor (torch-free).

- ``main``: ``tandem serve router`` (argparse + uvicorn); ``app``: the FastAPI app and endpoints.
- ``serving``: one request from HTTP body to response; ``generation``: its trip through the
  workers (events → text deltas, failures, aborts); ``dispatch``: the inbox thread and outboxes.
- ``protocol`` / ``validation``: OpenAI requests → sampling fields, 400s; ``responses``: bodies.
- ``tokenizer`` / ``detokenizer``: text ⇄ token ids with ``tokenizers`` + jinja2, stop strings.
- ``cluster``: live workers (registry) and cached prefixes (store index); ``policies`` (pure) and
  ``costs``: where a request goes, or why it is rejected; ``types``: the domain types.
- ``config``: frozen configuration; ``metrics``: Prometheus.
"""
