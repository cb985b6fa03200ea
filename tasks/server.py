"""`server` collection: run `mlflow server` on SQLite or PostgreSQL, ready when it says so."""

from invoke import task
from invoke.exceptions import Exit

from tasks.cli import CONFIG_HELP, PROFILE_HELP, settings_from, user_errors
from tasks.libs.core.tls import client_ca
from tasks.libs.monitoring.metrics import fetch_metrics, figures_table, request_figures
from tasks.libs.reporting.formats import table
from tasks.libs.server.control import (
    log_tail,
    server_status,
    start_server,
    stop_server,
)

COMMON = {"profile": PROFILE_HELP, "config": CONFIG_HELP}
START_HELP = {
    **COMMON,
    "backend": "sqlite or postgres",
    "port": "port to listen on (default 3111)",
    "host": "interface to bind (default 127.0.0.1)",
    "workers": "uvicorn worker processes",
}


def _settings(profile, config, backend=None, **server_flags):
    flags = {f"server.{name}": value for name, value in server_flags.items()}
    return settings_from(profile, config, backend=backend, **flags).settings


@task(help=START_HELP)
def start(c, backend=None, port=None, host=None, workers=None, profile=None, config=None):
    """Start the MLflow server and wait until it serves requests."""
    with user_errors():
        settings = _settings(profile, config, backend, port=port, host=host, workers=workers)
        result = start_server(settings)
    for line in result.warnings + result.notes:
        print(line)
    rec = result.record
    if result.reused:
        print(f"server already running at {rec.url} ({rec.backend}, pid {rec.pid}); reused")
    else:
        print(f"server ready at {rec.url} ({rec.backend}, pid {rec.pid}) in {result.seconds:.1f} s")
    ca = client_ca(settings)
    if rec.url.startswith("https:") and ca:
        print(f"TLS: clients trust {ca} (MLflow's client: MLFLOW_TRACKING_SERVER_CERT_PATH={ca})")
    if settings.server.auth.enabled:
        print(
            f"sign-in required: user {settings.server.auth.admin_user}, password in "
            f"{settings.state_path / 'secrets' / 'admin_password'} (or server.auth.admin_password)"
        )


@task(help=COMMON)
def stop(c, profile=None, config=None):
    """Stop the server and every process it started (SIGTERM, then SIGKILL)."""
    with user_errors():
        print(stop_server(_settings(profile, config)))


@task(help=START_HELP)
def restart(c, backend=None, port=None, host=None, workers=None, profile=None, config=None):
    """Stop the server if it runs, then start it."""
    stop(c, profile=profile, config=config)
    start(c, backend=backend, port=port, host=host, workers=workers, profile=profile, config=config)


@task(help=COMMON)
def status(c, profile=None, config=None):
    """Show pid, uptime, backend, URL and health; exit 3 when the server is not running."""
    with user_errors():
        state = server_status(_settings(profile, config))
    print(table(state.items(), plain=True))
    if not state["running"]:
        raise Exit(code=3)


@task(help={**COMMON, "lines": "how many lines from the end (default 50)"})
def logs(c, lines=50, profile=None, config=None):
    """Print the end of the server's log (secrets masked)."""
    with user_errors():
        print(log_tail(_settings(profile, config), int(lines)))


@task(
    help={
        **COMMON,
        "url": "server to read /metrics from (default the configured server; a replica's own URL in a cluster)",
    }
)
def metrics(c, url=None, profile=None, config=None):
    """Requests by method and status and latency quantiles, from the server's /metrics (server.metrics on)."""
    with user_errors():
        settings = _settings(profile, config)
        target = (url or settings.server.url).rstrip("/")
        ca = client_ca(settings)
        figures = request_figures(fetch_metrics(target, ca=str(ca) if ca else None))
    if not figures:
        print(f"{target}/metrics counts no request yet (/health and artifact transfers are not counted)")
        return
    rows, headers = figures_table(figures)
    print(f"{target}/metrics, since the server started (summed over its workers):")
    print(table(rows, headers))
