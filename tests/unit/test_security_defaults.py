"""Security defaults: loopback only, private state files, opt-in basic auth, no secret leaks."""

import pytest

from tasks.libs.core.errors import ConfigError
from tasks.libs.server.control import bind_warnings
from tests.support.settings import make_settings


def test_defaults_bind_loopback_only(state_dir):
    settings = make_settings(state_dir)
    assert settings.server.host == "127.0.0.1" and settings.postgres.host == "127.0.0.1"
    assert bind_warnings(settings) == []
    settings.server.host = "0.0.0.0"
    assert "WARNING: the server listens on 0.0.0.0" in bind_warnings(settings)[0]


def test_mlflow_old_default_admin_password_is_refused(state_dir):
    with pytest.raises(ConfigError, match="old default admin password"):
        make_settings(state_dir, **{"server.auth.admin_password": "password1234"})
