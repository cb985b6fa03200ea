"""The scale bench's artifact phase: one large file up and down through the proxied server, with the
server's idle and peak RSS, beside the same bytes copied over loopback HTTP (loopback_copy)."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tasks.libs.bench.footprint import PeakSampler, tree_memory
from tasks.libs.bench.runner import server_pgid
from tasks.libs.bench.scale_calls import figure
from tasks.libs.bench.scale_spec import ScaleTarget
from tasks.libs.core.processes import free_port

# The client's multipart settings for the 1 GiB artifact (MLflow reads them at call time).
# Through the proxy, multipart needs a cloud store behind the server (S3, GCS, Azure): with a
# local artifact root the client sends one streaming PUT and reads one streaming GET whatever
# these say; they are set so that a bucket behind the server would use them.
ARTIFACT_CLIENT_ENV = {
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
    "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(100 * 2**20),
    "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE": str(64 * 2**20),
    # a local root answers the presigned-download request with 501 and the client falls back:
    # off, to save that request (MLflow's own warning says so)
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "1200",
}


def write_blob(path: Path, mib: int) -> None:
    block = os.urandom(2**20)
    with open(path, "wb") as fh:
        for i in range(mib):
            fh.write(block[i % 251 :] + block[: i % 251])  # no two MiB alike, cheaply


def artifacts(pair: list[ScaleTarget], blob: Path, doc: dict, say) -> None:
    from mlflow import MlflowClient

    size_mb = blob.stat().st_size / 1e6
    saved = {k: os.environ.get(k) for k in ARTIFACT_CLIENT_ENV}
    os.environ.update(ARTIFACT_CLIENT_ENV)
    try:
        for t in pair:
            client = MlflowClient(t.url)
            run = client.create_run(t.experiment_id, run_name="artifact").info.run_id
            pgid = server_pgid(t.settings)
            idle = tree_memory(pgid, pss=False)[0] if pgid else 0
            say(f"{t.target.name}: uploading {size_mb:,.0f} MB through the server")
            with PeakSampler({"server": pgid} if pgid else {}, interval=0.2) as up_peak:
                began = time.perf_counter()
                client.log_artifact(run, str(blob), artifact_path="big")
                up_s = time.perf_counter() - began
            say(f"{t.target.name}: downloading it")
            dst = Path(tempfile.mkdtemp(dir=blob.parent))
            with PeakSampler({"server": pgid} if pgid else {}, interval=0.2) as down_peak:
                began = time.perf_counter()
                got = Path(client.download_artifacts(run, f"big/{blob.name}", str(dst)))
                down_s = time.perf_counter() - began
            same = got.stat().st_size == blob.stat().st_size
            shutil.rmtree(dst, ignore_errors=True)
            for stored in t.settings.state_path.rglob(blob.name):  # the server's copy: disk for the next one
                stored.unlink()
            limit = doc["artifact_limit"][0] if doc["artifact_limit"] else {}
            for direction, seconds, peak in (
                ("upload", up_s, up_peak.peaks.get("server", 0)),
                ("download", down_s, down_peak.peaks.get("server", 0)),
            ):
                doc["figures"].append(
                    figure(
                        t,
                        f"{blob.stat().st_size // 2**20:,} MiB artifact {direction}",
                        "proxied",
                        {
                            "n": 1,
                            "errors": 0 if same else 1,
                            "error_examples": [] if same else ["the downloaded file differs in size"],
                            "p50_ms": math.nan,
                            "rate": size_mb / seconds,
                            "unit": "MB/s",
                            "idle_rss": idle,
                            "peak_rss": peak,
                            "server_cpu_ms": math.nan,
                        },
                        limit={
                            "rate": limit.get(f"{direction}_mb_s", math.nan),
                            "what": "loopback HTTP copy of the same bytes",
                        },
                    )
                )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def loopback_copy(blob: Path, folder: Path) -> dict[str, Any]:
    """The same bytes PUT to and GOT from a plain Python HTTP server on loopback that streams them
    to and from a file on the same disk, 1 MiB at a time: what moving them costs without MLflow."""
    import requests

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "copy.bin"

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            left = int(self.headers["Content-Length"])
            with open(target, "wb") as fh:
                while left > 0:
                    chunk = self.rfile.read(min(2**20, left))
                    if not chunk:
                        break
                    fh.write(chunk)
                    left -= len(chunk)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(target.stat().st_size))
            self.end_headers()
            with open(target, "rb") as fh:
                shutil.copyfileobj(fh, self.wfile, 2**20)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/blob"
    size_mb = blob.stat().st_size / 1e6
    try:
        with open(blob, "rb") as fh:
            began = time.perf_counter()
            requests.put(url, data=fh, timeout=1200).raise_for_status()
            up_s = time.perf_counter() - began
        began = time.perf_counter()
        with requests.get(url, stream=True, timeout=1200) as resp, open(folder / "back.bin", "wb") as out:
            resp.raise_for_status()
            for chunk in resp.iter_content(2**20):
                out.write(chunk)
        down_s = time.perf_counter() - began
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)
    return {"what": "loopback HTTP PUT/GET (Python http.server, 1 MiB chunks, same disk)", "upload_mb_s": size_mb / up_s,
            "download_mb_s": size_mb / down_s}  # fmt: skip
