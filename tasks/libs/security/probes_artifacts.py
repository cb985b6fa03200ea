"""Probes of the artifact endpoints: traversal on read and write, model-version sources,
experiment artifact locations, and symlinks escaping the artifact root.

Each returns its PASS reason or raises CheckFailed / CheckSkipped. Shapes replay the
published exploits (data/security/mlflow_known_fixed.yaml); on a server we own, a canary is
planted next to the artifact root and the disk is checked after the requests.
"""

from __future__ import annotations

import os
import secrets as _secrets
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from tasks.libs.reporting.records import CheckFailed, CheckSkipped
from tasks.libs.security.http import Answer
from tasks.libs.security.target import Session, Target, probe_name
from tasks.libs.store.usage import local_artifact_path

PROXIED = "/api/2.0/mlflow-artifacts/artifacts"
INVALID_HOST = "Invalid Host header"
# MLflow's 503 on the proxied routes of a server run with --no-serve-artifacts (both its Flask
# and its FastAPI wording name the flag).
NOT_SERVED = "serve-artifacts"
FAKE_RUN = "0" * 32  # paths are validated before the run is looked up: no run is needed
WALK_LIMIT = 200_000  # entries the symlink scan looks at
WALK_SECONDS = 10.0
SEARCH_PAGES = 10  # experiments/search pages of 1000 the location scan reads at most


@dataclass
class Canary:
    rel: str  # from the artifact root, "../security-probe-x/canary-y.txt"
    path: Path
    token: str


def plant_canary(target: Target) -> Canary | None:
    """A file outside the artifact root that a traversal would reach; only on a server we own."""
    local = target.local
    if not (target.owned and local and local.artifact_root):
        return None
    local.scratch_dir.mkdir(mode=0o700, exist_ok=True)
    path = local.scratch_dir / f"canary-{_secrets.token_hex(4)}.txt"
    token = f"MLFLOW-OPS-CANARY-{_secrets.token_hex(8)}"
    path.write_text(token + "\n")
    rel = os.path.relpath(path, local.artifact_root.resolve())
    if not rel.startswith(".."):
        raise CheckSkipped(f"{local.scratch_dir} lies inside the artifact root; no canary can sit outside it")
    return Canary(rel, path, token)


def remove_scratch(target: Target) -> None:
    scratch = target.local.scratch_dir if target.local else None
    if scratch and scratch.is_dir():
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()


def _refused_by_host(answer: Answer, target: Target) -> None:
    if answer.status == 403 and INVALID_HOST in answer.text:
        raise CheckSkipped(f"the server refuses our Host header {target.netloc!r} (403); probe it by a name it allows")


def _histogram(statuses: list[int]) -> str:
    off = {503: " (artifact serving off)"}
    return ", ".join(f"{n}x HTTP {code}{off.get(code, '')}" for code, n in sorted(Counter(statuses).items()))


def check_traversal_read(target: Target) -> str:
    s = Session(target)
    canary = plant_canary(target)
    try:
        if canary:
            rel, absolute, token = canary.rel, str(canary.path), canary.token
        else:  # names nobody has: the verdict rests on the answers alone
            rel, absolute, token = f"../{probe_name()}.txt", f"/nonexistent-{probe_name()}.txt", None
        ups = rel.count("../")
        tail = rel.replace("../", "")
        enc = "%2e%2e/" * ups + tail
        enc_slash = "%2e%2e%2f" * ups + tail
        double = quote(quote(rel, safe=""), safe="")  # ../x -> %252E%252E%252Fx
        parent = os.path.dirname(absolute)
        refuse = [  # every one must be refused (HTTP 400 on MLflow 3.x), never served
            ("GET ..", f"{PROXIED}/{rel}"),
            ("GET %2e%2e", f"{PROXIED}/{enc}"),
            ("GET %2e%2e%2f", f"{PROXIED}/{enc_slash}"),
            ("GET %252e (double)", f"{PROXIED}/{double}"),
            ("GET absolute", f"{PROXIED}/{absolute}"),  # .../artifacts//tmp/...: the '//' is kept
            ("GET %2f absolute", f"{PROXIED}/%2f{absolute.lstrip('/')}"),
            ("GET file://", f"{PROXIED}/file:%2f%2f{absolute}"),
            ("GET ajax %2e%2e", f"/ajax-api/2.0/mlflow-artifacts/artifacts/{enc}"),
            ("LIST ..", f"{PROXIED}?path=.."),
            ("LIST %2e%2e", f"{PROXIED}?path=%2e%2e"),
            ("LIST %252e", f"{PROXIED}?path=%252e%252e"),
            ("LIST absolute", f"{PROXIED}?path={quote(parent)}"),
            ("LIST file://", f"{PROXIED}?path={quote('file://' + parent)}"),
            ("run ..", f"/get-artifact?path={quote(rel)}&run_uuid={FAKE_RUN}"),
            ("run %252e", f"/get-artifact?path={quote(double)}&run_uuid={FAKE_RUN}"),
            ("run absolute", f"/get-artifact?path={quote(absolute)}&run_uuid={FAKE_RUN}"),
            ("run file://", f"/get-artifact?path={quote('file://' + absolute)}&run_uuid={FAKE_RUN}"),
            ("model version ..", f"/model-versions/get-artifact?name={probe_name()}&version=1&path={quote(rel)}"),
            (
                "model version absolute",
                f"/model-versions/get-artifact?name={probe_name()}&version=1&path={quote(absolute)}",
            ),
        ]
        backslash = [  # a file-name character on POSIX: 400 or 404 are fine, content is not
            ("GET ..\\", f"{PROXIED}/{'%5c'.join(rel.split('/'))}"),
            ("LIST ..\\..", f"{PROXIED}?path=..%5c.."),
        ]
        bad, statuses = [], []
        for label, path in refuse + backslash:
            a = s.get(path, auth=bool(target.credentials))
            s.needs_auth(a, "the artifact endpoints")
            _refused_by_host(a, target)
            must = (label, path) in refuse
            if a.status == 503 and NOT_SERVED in a.text:
                statuses += [a.status] if must else []
                continue  # the route is switched off: nothing behind it to reach
            if must:
                statuses.append(a.status)
            if token is not None and token in a.text:
                bad.append(f"{label} read the canary outside the artifact root")
            elif a.status == 200 and not label.startswith("LIST"):
                bad.append(f"{label} answered 200 ({len(a.body)} bytes)")
            elif a.status == 200 and must and '"files"' in a.text:
                bad.append(f"{label} listed a folder outside the root")
            elif must and a.status == 404 and "RESOURCE_DOES_NOT_EXIST" in a.text and label.startswith("GET"):
                bad.append(f"{label} was looked up, not refused (404)")
            elif must and a.status >= 500:
                bad.append(f"{label} answered HTTP {a.status}")
        if bad:
            raise CheckFailed("; ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""))
        where = " (a canary planted next to the artifact root was not read)" if canary else ""
        return (
            f"{len(refuse)} traversal reads {'refused or switched off' if 503 in statuses else 'refused'} "
            f"({_histogram(statuses)}), "
            f"{len(backslash)} backslash shapes not served{where}"
        )
    finally:
        remove_scratch(target)


def check_traversal_write(target: Target) -> str:
    if not target.can_write:
        raise CheckSkipped("uploads need a server we started or --allow-writes")
    s = Session(target)
    auth = bool(target.credentials)
    folder = probe_name()
    control = f"{folder}/probe.txt"
    a = s.request("PUT", f"{PROXIED}/{control}", body=b"mlflow-ops probe", auth=auth)
    s.needs_auth(a, "artifact uploads")
    _refused_by_host(a, target)
    if a.status != 200:
        raise CheckSkipped(f"the server takes no proxied uploads (PUT answered HTTP {a.status}); nothing to probe")
    local = target.local if target.owned else None
    landed = local is not None and local.artifact_root is not None and (local.artifact_root / control).is_file()
    s.request("DELETE", f"{PROXIED}/{folder}", auth=auth)
    canary = plant_canary(target) if landed else None
    scratch = local.scratch_dir if (local and canary) else None
    before = set(os.listdir(scratch)) if scratch else set()
    try:
        rel = canary.rel if canary else f"../{probe_name()}.txt"
        absolute = str(canary.path) if canary else f"/nonexistent-{probe_name()}.txt"
        name = f"written-{_secrets.token_hex(4)}.txt"
        rel_new = os.path.join(os.path.dirname(rel), name)
        abs_new = os.path.join(os.path.dirname(absolute), name)
        puts = [
            f"{PROXIED}/{rel_new}",
            f"{PROXIED}/{'%2e%2e/' * rel_new.count('../')}{rel_new.replace('../', '')}",
            f"{PROXIED}/{quote(quote(rel_new, safe=''), safe='')}",
            f"{PROXIED}/{abs_new}",
            f"{PROXIED}/%2f{abs_new.lstrip('/')}",
        ]
        deletes = [  # CVE-2023-6831 / CVE-2024-1560 shapes, aimed at the canary
            f"{PROXIED}/{rel}",
            f"{PROXIED}/{quote(quote(rel, safe=''), safe='')}",
            f"{PROXIED}/%2e%2e/{rel}",
        ]
        bad = []
        for method, paths in (("PUT", puts), ("DELETE", deletes)):
            for path in paths:
                body = b"mlflow-ops traversal probe" if method == "PUT" else None
                a = s.request(method, path, body=body, auth=auth)
                if a.status == 200:
                    bad.append(f"{method} {path[len(PROXIED) :][:60]} answered 200")
        if scratch and canary:
            new = set(os.listdir(scratch)) - before
            if new:
                bad.append(f"files appeared outside the artifact root: {', '.join(sorted(new))}")
            if not canary.path.exists():
                bad.append(f"the canary {canary.path} outside the artifact root was deleted")
        if bad:
            raise CheckFailed("; ".join(bad[:4]))
        disk = (
            " and nothing changed outside the artifact root on disk"
            if canary
            else " (the artifact root is not on this disk: answers only)"
        )
        return f"{len(puts)} PUT and {len(deletes)} DELETE traversal shapes refused{disk}"
    finally:
        remove_scratch(target)


def check_model_version_source(target: Target) -> str:
    if not target.can_write:
        raise CheckSkipped("creating an experiment, a run and a model needs a server we started or --allow-writes")
    s = Session(target)
    auth = bool(target.credentials)
    name = probe_name()
    outside = str(target.local.scratch_dir) if (target.owned and target.local) else f"/nonexistent-{name}"
    made: list[str] = []
    model = False
    try:
        a = s.post("/api/2.0/mlflow/experiments/create", {"name": name}, auth=auth)
        s.needs_auth(a, "creating an experiment")
        _refused_by_host(a, target)
        if a.status in (401, 403):
            raise CheckSkipped(f"we may not create an experiment here (HTTP {a.status})")
        if a.status != 200:
            raise CheckFailed(f"could not create the probe's experiment: HTTP {a.status} {a.text[:80]!r}")
        made.append(a.json()["experiment_id"])
        r = s.post("/api/2.0/mlflow/runs/create", {"experiment_id": made[0]}, auth=auth)
        if r.status != 200:
            raise CheckFailed(f"could not create the probe's run: HTTP {r.status} {r.text[:80]!r}")
        run = r.json()["run"]["info"]
        run_id, root = run["run_id"], run["artifact_uri"]
        model = s.post("/api/2.0/mlflow/registered-models/create", {"name": name}, auth=auth).status == 200
        sources = [  # (label, source, send run_id)
            ("file:// outside, no run_id (CVE-2023-1177)", f"file://{outside}", False),
            ("file:// outside", f"file://{outside}", True),
            ("plain path outside", outside, True),
            ("//path (CVE-2023-6977)", f"/{outside}", False),
            ("file://./ (CVE-2023-2780)", "file://./" + outside.lstrip("/"), False),
            ("run root + ..", f"{root}/../../../", True),
            ("run root + %2e%2e", f"{root}/%2e%2e/%2e%2e/%2e%2e", True),
            ("run root + %252e", f"{root}/%252e%252e/%252e%252e", True),
            ("runs:/ + ..", f"runs:/{run_id}/../../", True),
            ("http:// (SSRF, CVE-2023-6974)", "http://127.0.0.1:9/x", True),
            ("s3 + ..", "s3://bucket/x/../../y", False),
        ]
        bad = []
        for label, source, with_run in sources:
            body = {"name": name, "source": source, **({"run_id": run_id} if with_run else {})}
            if s.post("/api/2.0/mlflow/model-versions/create", body, auth=auth).status == 200:
                bad.append(f"source {label} accepted")
        locations = [  # artifact_location shapes of past exploits: refused when the experiment is made
            ("http:///?/.. (CVE-2023-6909)", f"http:///?/../../../../..{outside}/"),
            ("http:///#/.. (CVE-2024-1483, CVE-2024-2928)", f"http:///#/../../../../..{outside}/"),
            ("file:// + #fragment (CVE-2024-1594, CVE-2024-3848)", f"file://{outside}#/../x"),
            ("file:// + ?.. query", f"file:///x?/../..{outside}"),
        ]
        for label, location in locations:
            a = s.post(
                "/api/2.0/mlflow/experiments/create", {"name": probe_name(), "artifact_location": location}, auth=auth
            )
            if a.status == 200:
                made.append(a.json()["experiment_id"])
                bad.append(f"artifact_location {label} accepted")
        if bad:
            raise CheckFailed("; ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""))
        return f"{len(sources)} model-version sources and {len(locations)} artifact locations outside the root refused"
    finally:
        with s.cleanup():
            if model:
                s.request("DELETE", "/api/2.0/mlflow/registered-models/delete", body={"name": name}, auth=auth)
            for experiment in made:
                s.post("/api/2.0/mlflow/experiments/delete", {"experiment_id": experiment}, auth=auth)


def check_artifact_locations(target: Target) -> str:
    """MLflow lets any client that may create an experiment give it any server-local path
    (measured on 3.17.2): look for experiments whose artifacts live outside the artifact root."""
    s = Session(target)
    auth = bool(target.credentials)
    locations: list[tuple[str, str]] = []
    token, pages = None, 0
    while pages < SEARCH_PAGES:
        body: dict = {"max_results": 1000, "view_type": "ALL", **({"page_token": token} if token else {})}
        a = s.post("/api/2.0/mlflow/experiments/search", body, auth=auth)
        s.needs_auth(a, "experiments/search")
        _refused_by_host(a, target)
        if a.status != 200:
            raise CheckFailed(f"experiments/search answered HTTP {a.status}: {a.text[:80]!r}")
        data = a.json()
        locations += [(e.get("name", "?"), e.get("artifact_location", "")) for e in data.get("experiments", [])]
        pages += 1
        token = data.get("next_page_token")
        if not token:
            break
    more = f" (the first {len(locations)}; more not read)" if token else ""
    local = [(n, loc) for n, loc in locations if _local_path(loc, target) is not None]
    root = target.local.artifact_root.resolve() if target.local and target.local.artifact_root else None
    if root is None:
        if local:
            raise CheckSkipped(
                f"{len(local)} of {len(locations)} experiments keep artifacts in server-local paths "
                f"(e.g. {local[0][1]}); the server's artifact root is unknown here, so they cannot be judged"
            )
        return f"{len(locations)} experiment(s){more}, none with a server-local artifact path"
    outside = []
    for name, loc in local:
        path = _local_path(loc, target)
        if path is not None and not Path(os.path.normpath(path)).is_relative_to(root):
            outside.append(f"{name!r} -> {loc}")
    if outside:
        raise CheckFailed(
            f"{len(outside)} experiment(s) keep artifacts outside the artifact root {root}: "
            + "; ".join(outside[:3])
            + " (MLflow accepts any server-local artifact_location; the server writes there)"
        )
    return f"{len(locations)} experiment(s){more}, every artifact location inside {root} or in the artifact store"


def _local_path(location: str, target: Target) -> Path | None:
    root = target.local.artifact_root if target.local else None
    if urlsplit(location).scheme == "mlflow-artifacts":  # relative to the root: only '..' can leave it
        rel = unquote(urlsplit(location).path).lstrip("/")
        return (root or Path("/artifact-root")) / rel if ".." in rel.split("/") else None
    return local_artifact_path(location, root)


def escaping_symlinks(root: Path) -> list[tuple[Path, Path]]:
    """(link, where it leads) for every symlink under root that leads outside it (links not followed)."""
    real_root = root.resolve()
    found, seen, started = [], 0, time.monotonic()
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            seen += 1
            if seen > WALK_LIMIT or time.monotonic() - started > WALK_SECONDS:
                raise CheckSkipped(f"the artifact root is too large to scan ({seen} entries in {WALK_SECONDS:g} s)")
            path = Path(folder, name)
            if path.is_symlink():
                dest = path.resolve()
                if not dest.is_relative_to(real_root):
                    found.append((path, dest))
    return found


def check_symlink_escape(target: Target) -> str:
    root = target.local.artifact_root if target.local else None
    if root is None or not root.is_dir():
        raise CheckSkipped(
            "the artifact root is not a local folder we know (only the configured server's local store is)"
        )
    found = escaping_symlinks(root)
    if not found:
        return f"no symlink under {root} leads outside it"
    link, _ = found[0]
    served = ""
    if target.owned:  # MLflow 3.17.2 refuses GET through it (400) but DELETE follows it
        a = Session(target).get(f"{PROXIED}/{quote(link.relative_to(root).as_posix())}", auth=bool(target.credentials))
        served = f"; GET through {link.name} answered HTTP {a.status}"
    listing = ", ".join(f"{p.relative_to(root)} -> {d}" for p, d in found[:3])
    raise CheckFailed(
        f"{len(found)} symlink(s) in the artifact root lead outside it ({listing}){served}; "
        "MLflow refuses reads and uploads through them, but a DELETE through one deletes outside the root"
    )
