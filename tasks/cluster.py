"""`cluster` collection: several MLflow servers on one PostgreSQL behind HAProxy, and what serves them."""

from invoke import task
from invoke.exceptions import Exit

from tasks.cli import CONFIG_HELP, PROFILE_HELP, settings_from, user_errors
from tasks.libs.cluster.orchestrate import cluster_down, cluster_status, cluster_up
from tasks.libs.reporting.formats import table

COMMON = {"profile": PROFILE_HELP, "config": CONFIG_HELP}


def _settings(profile, config, **flags):
    return settings_from(profile, config, **flags).settings


@task(
    help={
        **COMMON,
        "backend": "postgres (the only backend a cluster runs on; default from config)",
        "replicas": "how many mlflow server replicas (default cluster.replicas, 2)",
        "pgbouncer": "put PgBouncer between the replicas and PostgreSQL (default cluster.pgbouncer.enabled)",
        "read_replica": "a streaming standby for reads (default cluster.read_replica.enabled; local provider)",
        "tls": "HAProxy terminates TLS with server.tls's certificate (default cluster.tls, else server.tls.enabled)",
    }
)
def up(c, backend=None, replicas=None, pgbouncer=False, read_replica=False, tls=False, profile=None, config=None):
    """Start (or complete) the cluster: replicas behind HAProxy on the running PostgreSQL."""
    with user_errors():
        settings = _settings(
            profile,
            config,
            backend=backend,
            **{
                "cluster.replicas": replicas,
                "cluster.pgbouncer.enabled": True if pgbouncer else None,
                "cluster.read_replica.enabled": True if read_replica else None,
                "cluster.tls": True if tls else None,
            },
        )
        result = cluster_up(settings, say=lambda line: print(line, flush=True))
    print(f"cluster ready at {result.url} in {result.seconds:.1f} s (`inv cluster.status` shows each replica)")


@task(help={**COMMON, "wipe": "also drop the standby's data and slot, and <state_dir>/cluster (logs, configs)"})
def down(c, wipe=False, profile=None, config=None):
    """Stop HAProxy, the replicas, PgBouncer and the standby; PostgreSQL keeps running (db.stop stops it)."""
    with user_errors():
        for line in cluster_down(_settings(profile, config), wipe=wipe):
            print(line)


@task(help=COMMON)
def status(c, profile=None, config=None):
    """Each replica as HAProxy, /health and its process group see it; exit 3 when nothing runs, 1 when degraded."""
    with user_errors():
        state = cluster_status(_settings(profile, config))
    if state["replicas"]:
        replicas = state["replicas"]
        print(table([list(r.values()) for r in replicas], list(replicas[0])))
        print()
    print(table(state["info"].items(), plain=True))
    if not state["running"]:
        raise Exit("the cluster is not running: `inv cluster.up`", code=3)
    if state["degraded"]:
        raise Exit(
            f"the cluster is degraded: {', '.join(state['degraded'])}; `inv cluster.up` restarts dead replicas", code=1
        )
