"""One HTTP request with the path sent byte for byte: what every security probe sends.

requests/urllib3 and curl (without --path-as-is) remove dot segments before sending
(`/a/../b` goes out as `/b`), so a traversal probe built on them tests the client, not the
server. http.client sends the request line as given. Redirects are never followed.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_BODY = 64 * 1024  # never pull a whole (possibly huge) artifact


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    base_url: str,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str | None] | None = None,
    body: bytes | str | dict | None = None,
    timeout: float = 10.0,
    ca: str | None = None,
) -> Answer:
    """base_url (scheme://host:port[/prefix]) + path, the path sent exactly as given.

    Exactly one Host header goes out (base_url's netloc unless headers name another; None
    sends none): http.client's own plus ours would be two, which WSGI joins into "a,b",
    and MLflow's host check then refuses every request to a server with an explicit list.
    An https URL is verified with ca (else MLFLOW_TRACKING_SERVER_CERT_PATH, else the system's store).
    """
    parts = urlsplit(base_url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        # The CA bundle MLflow's own client honours, else the system's trust store.
        context = ssl.create_default_context(cafile=ca or os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    wanted: dict[str, str | None] = {"Host": parts.netloc, **(headers or {})}
    if isinstance(body, dict):
        body = json.dumps(body)
        wanted.setdefault("Content-Type", "application/json")
    data = body.encode() if isinstance(body, str) else body
    try:
        conn.putrequest(method, parts.path.rstrip("/") + path, skip_host=True, skip_accept_encoding=True)
        for name, value in wanted.items():
            if value is not None:
                conn.putheader(name, value)
        if data is not None:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        resp = conn.getresponse()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(MAX_BODY))
    finally:
        conn.close()
