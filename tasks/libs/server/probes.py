"""Is a server there: /health, and a real store call (what `ready` means for a tracking server).

An https URL is verified with ca (a CA file: our private CA, server.tls.ca_file) or, without
one, the system's trust store: readiness proves the certificate too.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path


def tls_context(url: str, ca: Path | str | None) -> ssl.SSLContext | None:
    """The verifying context for an https URL (None for plain http)."""
    if not url.startswith("https:"):
        return None
    return ssl.create_default_context(cafile=str(ca) if ca else None)


def health(url: str, *, ca: Path | str | None = None) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2, context=tls_context(url, ca)) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def store_answers(url: str, *, headers: dict[str, str] | None = None, ca: Path | str | None = None) -> bool:
    body = json.dumps({"max_results": 1}).encode()
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/experiments/search",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=5, context=tls_context(url, ca)) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False
