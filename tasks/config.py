"""`config` collection: see the merged configuration and where each value came from."""

from invoke import task
from tabulate import tabulate

from tasks.cli import CONFIG_HELP, PROFILE_HELP, settings_from
from tasks.libs.core.settings import as_rows


@task(help={"profile": PROFILE_HELP, "config": CONFIG_HELP, "backend": "sqlite or postgres"})
def show(c, profile=None, config=None, backend=None):
    """Print the merged configuration, each value's source, secrets masked."""
    loaded = settings_from(profile, config, backend=backend)
    print(tabulate(as_rows(loaded), headers=["setting", "value", "from"]))
    print("\nlayers: " + " < ".join(loaded.layers))


@task(help={"profile": PROFILE_HELP, "config": CONFIG_HELP})
def check(c, profile=None, config=None):
    """Validate the configuration; exit non-zero with one line if it is wrong."""
    settings_from(profile, config)
    print("config OK")
