"""`config` collection: see the merged configuration and where each value came from."""

from invoke import task

from tasks.cli import CONFIG_HELP, PROFILE_HELP, settings_from
from tasks.libs.core.settings import as_rows
from tasks.libs.reporting.formats import table


@task(help={"profile": PROFILE_HELP, "config": CONFIG_HELP, "backend": "sqlite or postgres"})
def show(c, profile=None, config=None, backend=None):
    """Print the merged configuration, each value's source, secrets masked."""
    loaded = settings_from(profile, config, backend=backend)
    print(table(as_rows(loaded), ["setting", "value", "from"]))
    print("\nlayers: " + " < ".join(loaded.layers))


@task(help={"profile": PROFILE_HELP, "config": CONFIG_HELP})
def check(c, profile=None, config=None):
    """Validate the configuration; exit non-zero with one line if it is wrong."""
    settings_from(profile, config)
    print("config OK")
