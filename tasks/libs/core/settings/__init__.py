"""The tool's configuration: layered YAML, environment and flags, validated into one Settings.

One module per section (server, sqlite, postgres, artifacts, security, deploy, lifecycle,
cluster, monitoring, engine), the root model (model), the shared building blocks (base: StrictModel,
Port, AbsolutePath, PROJECT_ROOT) and the loader that merges the layers (loader).
"""

from tasks.libs.core.settings.base import PROJECT_ROOT, AbsolutePath, Port, StrictModel
from tasks.libs.core.settings.loader import CONFIG_DIR, Loaded, as_rows, load_settings
from tasks.libs.core.settings.model import Settings, ports_in_use

__all__ = [
    "CONFIG_DIR",
    "PROJECT_ROOT",
    "AbsolutePath",
    "Loaded",
    "Port",
    "Settings",
    "StrictModel",
    "as_rows",
    "load_settings",
    "ports_in_use",
]
