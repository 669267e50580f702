"""``tandem chat``: stream one answer from a running Tandem (or any OpenAI-compatible) server."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request


def stream_chat(
    base_url: str, prompt: str, max_tokens: int, temperature: float, api_key: str | None = None
) -> int:
    """Print the answer as it streams (sending ``api_key`` as a bearer token if given); returns a
    process exit code."""
    auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        models = urllib.request.Request(f"{base_url}/v1/models", headers=auth)
        with urllib.request.urlopen(models, timeout=10) as r:
            model = json.load(r)["data"][0]["id"]
        body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": temperature,
                "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
        request = urllib.request.Request(
            f"{base_url}/v1/chat/completions", data=json.dumps(body).encode(),
            headers={"content-type": "application/json", **auth},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=600) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[len("data: ") :])
                if "error" in event:
                    print(f"\ntandem: error: {event['error'].get('message')}", file=sys.stderr)
                    return 1
                for choice in event.get("choices", []):
                    print(choice["delta"].get("content") or "", end="", flush=True)
        print()
        return 0
    except urllib.error.HTTPError as e:
        print(f"tandem: error: HTTP {e.code}: {e.read().decode(errors='replace')}", file=sys.stderr)
    except OSError as e:
        print(f"tandem: error: cannot reach {base_url} ({e}); is `tandem up` running?", file=sys.stderr)
    return 1
