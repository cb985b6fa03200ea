"""Who may talk to the server: Host header (DNS rebinding), CORS, sign-in, default passwords,
per-experiment permissions.

Requests that could write on an open server send `{}` to experiments/create: it lacks the
required name, so even a server that lets it through creates nothing (HTTP 400).
"""

from __future__ import annotations

import secrets as _secrets

from tasks.libs.reporting.records import CheckFailed, CheckSkipped
from tasks.libs.security.target import Session, Target, is_loopback, probe_name

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
CREATE = "/api/2.0/mlflow/experiments/create"
CURRENT_USER = "/api/2.0/mlflow/users/current"
INVALID_HOST = "Invalid Host header"
CORS_BLOCKED = "Cross-origin request blocked"
FOREIGN_HOST = "evil.example"
FOREIGN_ORIGIN = "http://evil.example"
# Private addresses MLflow's own default list admits; config's list must have replaced it.
UNLISTED_PRIVATE = ("10.255.255.254", "192.168.255.254", "172.31.255.254")
# basic_auth.ini's shipped admin password: "password" before MLflow 2.22, "password1234" until 3.16.1.
DEFAULT_PASSWORDS = ("password1234", "password")
LEGACY_WARNING = "still uses the insecure default password"


def check_host_header(target: Target) -> str:
    s = Session(target)
    auth = bool(target.credentials)
    own = s.get(SEARCH, auth=auth)
    if own.status == 403 and INVALID_HOST in own.text:
        raise CheckSkipped(f"the server refuses our own Host {target.netloc!r}; probe it by a name it allows")
    a = s.get(SEARCH, auth=auth, headers={"Host": FOREIGN_HOST})
    if not (a.status == 403 and INVALID_HOST in a.text):
        raise CheckFailed(
            f"Host: {FOREIGN_HOST} answered HTTP {a.status}, not 403: no DNS-rebinding guard "
            "(--allowed-hosts '*' or --disable-security-middleware?)"
        )
    listed = target.local.allowed_hosts if target.local else None
    if not listed:
        return f"Host: {FOREIGN_HOST} refused with 403 on the API"
    unlisted = next(h for h in UNLISTED_PRIVATE if h not in listed)
    b = s.get(SEARCH, auth=auth, headers={"Host": unlisted})
    if b.status != 403:
        raise CheckFailed(
            f"Host: {unlisted} (not in config's allowed hosts) answered HTTP {b.status}: "
            "the server does not run with the configured --allowed-hosts"
        )
    refused = [h for h in listed[:4] if "*" not in h and s.get(SEARCH, auth=auth, headers={"Host": h}).status == 403]
    if refused:
        raise CheckFailed(f"hosts config allows are refused by the server: {', '.join(refused)}")
    return f"Host: {FOREIGN_HOST} and {unlisted} refused with 403; the server's allowed hosts are config's"


def check_cors(target: Target) -> str:
    s = Session(target)
    pre = s.request(
        "OPTIONS",
        CREATE,
        headers={
            "Origin": FOREIGN_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    allowed = pre.headers.get("access-control-allow-origin")
    post = s.post(CREATE, {}, headers={"Origin": FOREIGN_ORIGIN})
    bad = []
    if allowed in (FOREIGN_ORIGIN, "*"):
        bad.append(f"a preflight from {FOREIGN_ORIGIN} is allowed (Access-Control-Allow-Origin: {allowed})")
    if not (post.status == 403 and CORS_BLOCKED in post.text):
        through = post.headers.get("access-control-allow-origin")
        bad.append(
            f"a cross-origin POST reached the server (HTTP {post.status}"
            + (f", Access-Control-Allow-Origin: {through})" if through else ")")
        )
    if bad:
        raise CheckFailed("; ".join(bad) + " (--cors-allowed-origins '*'?)")
    return f"preflight from {FOREIGN_ORIGIN} not allowed (HTTP {pre.status}); its cross-origin POST blocked with 403"


def check_auth_required(target: Target, *, beyond_loopback: bool | None) -> str:
    """beyond_loopback: what the server's sockets say (None: unknown, judged by the URL)."""
    s = Session(target)
    a = s.post(CREATE, {})
    exposed = beyond_loopback if beyond_loopback is not None else not target.url_is_loopback
    if a.status == 403 and "Invalid Host header" in a.text:
        raise CheckSkipped(f"the server refuses our Host header {target.netloc!r} (403)")
    if a.status in (401, 403):
        routes = ("/ajax-api/3.0/jobs/", "/v1/traces")  # FastAPI routes that once skipped sign-in
        answers = {route: s.post(route, {}).status for route in routes}
        open_routes = [f"{route} (HTTP {code})" for route, code in answers.items() if code not in (401, 403)]
        if open_routes:
            raise CheckFailed(
                f"sign-in is on, but {', '.join(open_routes)} answered without credentials (CVE-2026-2652 class)"
            )
        return f"writes without credentials refused (HTTP {a.status}) on the REST, jobs and OTLP routes"
    if a.status == 400:  # it read our empty request: nothing stood in the way
        where = "beyond loopback" if exposed else "on loopback only"
        if exposed:
            raise CheckFailed(
                f"the server takes writes without credentials and is reachable {where} (server.auth.enabled?)"
            )
        return "no sign-in, but the server is reachable on loopback only"
    raise CheckFailed(f"a write without credentials answered HTTP {a.status}: {a.text[:80]!r}")


def check_default_password(target: Target) -> str:
    """A sign-in attempt (GET users/current) per pair: read-only, so no --allow-writes needed."""
    s = Session(target)
    probe = s.get(CURRENT_USER)
    if probe.status != 401:
        raise CheckSkipped(f"the server asks for no sign-in (users/current answered HTTP {probe.status})")
    users = ["admin"]
    if target.credentials and target.credentials[0] != "admin":
        users.append(target.credentials[0])
    hits = [
        f"{user}:{password} (an MLflow default) signs in"
        for user in users
        for password in DEFAULT_PASSWORDS
        if s.get(CURRENT_USER, auth=(user, password)).status == 200
    ]
    log = target.local.logs[0] if target.local else None
    if log is not None and log.is_file():
        with open(log, "rb") as fh:
            if any(LEGACY_WARNING.encode() in line for line in fh):
                hits.append(f"{log.name} warns that an account still has MLflow's old default password")
    if hits:
        raise CheckFailed("; ".join(hits))
    return f"{len(users) * len(DEFAULT_PASSWORDS)} default user/password pairs refused (HTTP 401)"


def check_permissions(target: Target) -> str:
    s = Session(target)
    if s.get(CURRENT_USER).status == 404:
        raise CheckSkipped("the server runs without MLflow's basic-auth app: no per-user permissions to test")
    if not target.credentials:
        raise CheckSkipped(
            "needs admin credentials to create two users (server.auth, or MLFLOW_TRACKING_USERNAME/PASSWORD)"
        )
    if not target.can_write:
        raise CheckSkipped("creating users needs a server we started or --allow-writes")
    who = s.get(CURRENT_USER, auth=True)
    if who.status != 200 or not who.json().get("user", {}).get("is_admin"):
        raise CheckSkipped(f"the credentials we hold are not an admin's (users/current: HTTP {who.status})")
    tag = _secrets.token_hex(3)
    owner = (f"mlflow-ops-owner-{tag}", _secrets.token_urlsafe(18))
    other = (f"mlflow-ops-other-{tag}", _secrets.token_urlsafe(18))
    made: list[str] = []
    experiment = None
    try:
        for user, password in (owner, other):
            a = s.post("/api/2.0/mlflow/users/create", {"username": user, "password": password}, auth=True)
            if a.status != 200:
                raise CheckFailed(f"users/create answered HTTP {a.status}: {a.text[:80]!r}")
            made.append(user)
        a = s.post(CREATE, {"name": probe_name()}, auth=owner)
        if a.status != 200:
            raise CheckFailed(f"a new user could not create an experiment: HTTP {a.status} {a.text[:80]!r}")
        experiment = a.json()["experiment_id"]
        grant = {"username": other[0], "resource_type": "experiment", "resource_id": experiment, "permission": "DENY"}
        g = s.post("/api/3.0/mlflow/users/permissions/grant", grant, auth=True)
        if g.status != 200:
            raise CheckFailed(f"permissions/grant answered HTTP {g.status}: {g.text[:100]!r}")
        read = f"/api/2.0/mlflow/experiments/get?experiment_id={experiment}"
        theirs, own = s.get(read, auth=other), s.get(read, auth=owner)
        if own.status != 200:
            raise CheckFailed(f"the owner cannot read its own experiment (HTTP {own.status})")
        if theirs.status != 403:
            raise CheckFailed(f"a user denied on another user's experiment read it anyway (HTTP {theirs.status})")
        return "a user denied on another user's experiment got 403; the owner got 200 (both users deleted)"
    finally:
        with s.cleanup():
            if experiment:
                s.post("/api/2.0/mlflow/experiments/delete", {"experiment_id": experiment}, auth=True)
            for user in made:
                s.request("DELETE", "/api/2.0/mlflow/users/delete", body={"username": user}, auth=True)


def exposed_beyond_loopback(addresses: list[tuple[str, int]] | None) -> bool | None:
    return None if addresses is None else any(not is_loopback(ip) for ip, _ in addresses)
