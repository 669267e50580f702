"""The router: OpenAI-compatible HTTP edge, conductor, dispatch and observability (torch-free).

The HTTP edge, at this level:
- ``main``: ``tandem serve router`` (argparse + uvicorn); ``app``: the FastAPI app and endpoints.
- ``admission``: parse → tokenize → route (or refuse) one request; ``serving``: its attempts and
  response (retried on other workers when one fails it early).
- ``protocol`` / ``validation``: OpenAI requests → typed sampling, 400s; ``responses``: bodies;
  ``errors``: ``ApiError``, the one failure type a client sees.
- ``tokenizer`` / ``detokenizer``: text ⇄ token ids with ``tokenizers`` + jinja2, stop strings.
- ``config``: ``RouterConfig``, frozen.

- ``conductor/``: where a request goes, or why it is rejected (pure: plain types, costs,
  policies, pending prefills; imports only ``worker.types``).
- ``dispatch/``: the cluster view, the worker channels, one request's trip through the workers,
  and every way a worker can fail it (suspects, retries, lost workers, deferred aborts).
- ``observe/``: Prometheus metrics, their recent history, the dashboard and its static files.
"""
