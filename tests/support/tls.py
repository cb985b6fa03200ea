"""Real TLS servers with certificates made for a test: expired, for another host, by another CA."""

from __future__ import annotations

import contextlib
import http.server
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509

from tasks.libs.core import certificates


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"OK"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def https_server(cert: x509.Certificate, key: certificates.Key) -> Iterator[int]:
    """An HTTPS server (Python's ssl module: OpenSSL) on a free loopback port presenting cert; its port."""
    with tempfile.TemporaryDirectory(prefix="mlflow-ops-tls-") as folder:
        cert_file, key_file = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_file.write_bytes(certificates.cert_pem(cert))
        certificates.write_file(key_file, certificates.key_pem(key), 0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
