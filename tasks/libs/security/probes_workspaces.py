"""Workspaces as walls: with sign-in on, a user of one workspace can neither read nor write another.

MLflow 3.17 (`--enable-workspaces` with the basic-auth app) gives every workspace two roles,
`admin` (MANAGE) and `user` (USE: read everything in it, create experiments and models); a user
with no role in a workspace has no permission there, `default` included, unless the auth config
sets `grant_default_workspace_access`. The probe makes two workspaces and a user of the first,
then, as that user, reads and writes what the admin made in the second and in `default`.
"""

from __future__ import annotations

import secrets as _secrets
from urllib.parse import quote

from tasks.libs.reporting.records import CheckFailed, CheckSkipped
from tasks.libs.security.http import Answer
from tasks.libs.security.target import NAME_PREFIX, Session, Target

WORKSPACES = "/api/3.0/mlflow/workspaces"
SERVER_INFO = "/api/3.0/mlflow/server-info"
CURRENT_USER = "/api/2.0/mlflow/users/current"
HEADER = "X-MLFLOW-WORKSPACE"
EXP_CREATE = "/api/2.0/mlflow/experiments/create"
EXP_GET = "/api/2.0/mlflow/experiments/get?experiment_id={}"
EXP_SEARCH = "/api/2.0/mlflow/experiments/search"
RUN_CREATE = "/api/2.0/mlflow/runs/create"


def check_workspace_isolation(target: Target) -> str:
    s = Session(target)
    if s.get(CURRENT_USER).status == 404:
        raise CheckSkipped("the server runs without MLflow's basic-auth app: a workspace is a grouping, not a wall")
    info = s.get(SERVER_INFO)
    if info.status != 200 or info.json().get("workspaces_enabled") is not True:
        raise CheckSkipped(f"the server runs without workspaces (server-info: HTTP {info.status}; server.workspaces)")
    if not target.credentials:
        raise CheckSkipped("needs admin credentials to make workspaces and a user (server.auth, or MLFLOW_TRACKING_*)")
    if not target.can_write:
        raise CheckSkipped("making workspaces and a user needs a server we started or --allow-writes")
    who = s.get(CURRENT_USER, auth=True)
    if who.status != 200 or not who.json().get("user", {}).get("is_admin"):
        raise CheckSkipped(f"the credentials we hold are not an admin's (users/current: HTTP {who.status})")

    tag = _secrets.token_hex(3)
    mine, theirs = f"{NAME_PREFIX}-{tag}-a", f"{NAME_PREFIX}-{tag}-b"
    user = (f"mlflow-ops-member-{tag}", _secrets.token_urlsafe(18))
    made: list[str] = []
    user_made = False
    default_experiment = None
    try:
        for workspace in (mine, theirs):
            _ok(s.post(WORKSPACES, {"name": workspace}, auth=True), f"creating workspace {workspace}", (200, 201))
            made.append(workspace)
        _ok(
            s.post("/api/2.0/mlflow/users/create", {"username": user[0], "password": user[1]}, auth=True),
            "users/create",
        )
        user_made = True
        roles = _ok(s.get(f"/api/3.0/mlflow/roles/list?workspace={quote(mine)}", auth=True), "roles/list").json()
        role = next((r["id"] for r in roles.get("roles", []) if r.get("name") == "user"), None)
        if role is None:
            raise CheckFailed(
                f"workspace {mine} has no 'user' role to give (roles: {[r.get('name') for r in roles.get('roles', [])]})"
            )
        _ok(s.post("/api/3.0/mlflow/roles/assign", {"username": user[0], "role_id": role}, auth=True), "roles/assign")
        other = _create(s, True, theirs)
        default_experiment = _create(s, True, None)
        own = _create(s, user, mine)  # the control: the user can work in its own workspace
        read_own = s.get(EXP_GET.format(own), auth=user, headers={HEADER: mine})
        if read_own.status != 200:
            raise CheckFailed(
                f"a user of workspace {mine} cannot read its own experiment there (HTTP {read_own.status})"
            )
        leaks = _leaks(s, user, mine, theirs, other) + _leaks(s, user, mine, None, default_experiment)
        if leaks:
            raise CheckFailed(f"a user of workspace {mine} reached others: " + "; ".join(leaks))
        return (
            f"a user of one workspace works in it (created and read an experiment) but cannot list, read or create "
            f"experiments or runs in another workspace nor in 'default' ({s.sent} requests; workspaces and user deleted)"
        )
    finally:
        with s.cleanup():
            if default_experiment:
                s.post("/api/2.0/mlflow/experiments/delete", {"experiment_id": default_experiment}, auth=True)
            for workspace in made:  # CASCADE: what the probe made in them goes with them
                s.request("DELETE", f"{WORKSPACES}/{quote(workspace)}?mode=CASCADE", auth=True)
            if user_made:
                s.request("DELETE", "/api/2.0/mlflow/users/delete", body={"username": user[0]}, auth=True)


def _leaks(s: Session, user: tuple[str, str], mine: str, workspace: str | None, experiment: str) -> list[str]:
    """What the user of `mine` got from `workspace` (None: 'default', asked without a header)."""
    where = f"workspace {workspace}" if workspace else "workspace 'default'"
    headers = {HEADER: workspace} if workspace else {}
    found = []
    listed = s.post(EXP_SEARCH, {"max_results": 100}, auth=user, headers=headers)
    if listed.status == 200 and any(e.get("experiment_id") == experiment for e in listed.json().get("experiments", [])):
        found.append(f"{where}'s experiment {experiment} is listed by experiments/search")
    intruder = {"name": f"{NAME_PREFIX}-intruder-{_secrets.token_hex(3)}"}
    for what, answer in (
        (f"read {where}'s experiment {experiment}", s.get(EXP_GET.format(experiment), auth=user, headers=headers)),
        (
            f"read {where}'s experiment {experiment} under its own workspace's header",
            s.get(EXP_GET.format(experiment), auth=user, headers={HEADER: mine}),
        ),
        (f"created an experiment in {where}", s.post(EXP_CREATE, intruder, auth=user, headers=headers)),
        (
            f"created a run in {where}'s experiment {experiment}",
            s.post(RUN_CREATE, {"experiment_id": experiment}, auth=user, headers=headers),
        ),
    ):
        if answer.status == 200:
            found.append(f"{what} (HTTP 200)")
    return found


def _create(s: Session, auth: bool | tuple[str, str], workspace: str | None) -> str:
    headers = {HEADER: workspace} if workspace else {}
    a = s.post(EXP_CREATE, {"name": f"{NAME_PREFIX}-{_secrets.token_hex(4)}"}, auth=auth, headers=headers)
    who = "the admin" if auth is True else "the workspace's user"
    _ok(a, f"{who} creating an experiment in {workspace or 'default'}")
    return str(a.json()["experiment_id"])


def _ok(answer: Answer, what: str, good: tuple[int, ...] = (200,)) -> Answer:
    if answer.status not in good:
        raise CheckFailed(f"{what} answered HTTP {answer.status}: {answer.text[:100]!r}")
    return answer
