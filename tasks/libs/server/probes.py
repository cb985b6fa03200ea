"""Is a server there: /health, and a real store call (what `ready` means for a tracking server)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def store_answers(url: str, *, headers: dict[str, str] | None = None) -> bool:
    body = json.dumps({"max_results": 1}).encode()
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/experiments/search",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False
