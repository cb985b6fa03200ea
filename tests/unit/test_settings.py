"""Config layering and every refusal: one clear line naming the source."""

import pytest

from tasks.libs.core.credentials import backend_store_uri, postgres_uri
from tasks.libs.core.errors import ConfigError
from tasks.libs.core.settings import as_rows, load_settings


def load(tmp_path, yaml_text="{}", environ=None, **flags):
    user = tmp_path / "user.yaml"
    user.write_text(yaml_text)
    return load_settings(config_file=str(user), overrides=flags, environ=environ or {})


def test_defaults_are_the_documented_ports(tmp_path):
    s = load(tmp_path).settings
    assert (s.backend, s.server.port, s.postgres.port) == ("sqlite", 3111, 3110)
    assert (s.postgres.database, s.postgres.user, s.server.host) == ("mlflow", "mlflow_user", "127.0.0.1")


def test_each_layer_overrides_the_one_below(tmp_path):
    loaded = load(
        tmp_path,
        "server: {workers: 3, port: 4000, stop_grace: 9}",
        environ={"MLFLOW_OPS_SERVER__PORT": "4100", "MLFLOW_OPS_SERVER__STOP_GRACE": "7", "MLFLOW_OPS_PROFILE": "ci"},
        **{"server.port": 4200},
    )
    s, src = loaded.settings, loaded.sources
    assert s.server.port == 4200 and src["server.port"] == "flag --port"
    assert s.server.stop_grace == 7 and src["server.stop_grace"] == "env MLFLOW_OPS_SERVER__STOP_GRACE"
    assert s.server.workers == 3 and src["server.workers"].endswith("user.yaml")
    assert s.postgres.provider == "local" and src["postgres.provider"] == "config/profiles/ci.yaml"
    assert src["server.host"] == "config/defaults.yaml"


def test_backend_layer_is_chosen_by_the_winning_backend(tmp_path):
    loaded = load(tmp_path, "backend: sqlite", **{"backend": "postgres"})
    assert "config/backends/postgres.yaml" in loaded.layers
    assert loaded.settings.server.env["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"] == "10"


@pytest.mark.parametrize(
    "yaml_text, environ, flags, expected",
    [
        ("server: {prot: 3}", {}, {}, "unknown setting 'server.prot' (did you mean 'server.port'?)"),
        ("servr: {}", {}, {}, "unknown setting 'servr' (did you mean 'server'?)"),
        ("{}", {"MLFLOW_OPS_SERVR__PORT": "1"}, {}, "env MLFLOW_OPS_SERVR__PORT: unknown setting 'servr'"),
        ("server: {port: 70000}", {}, {}, "server.port = 70000: Input should be less than or equal to 65535"),
        ("server: {port: 0}", {}, {}, "server.port = 0"),
        ("server: {workers: many}", {}, {}, "server.workers = 'many'"),
        ("{}", {}, {"backend": "mysql"}, "flag --backend: backend = 'mysql' is not one of 'sqlite' or 'postgres'"),
        ("{}", {}, {"backend": "postgress"}, "(did you mean 'postgres'?)"),
        ("a: [\n", {}, {}, "not valid YAML"),
        ("", {}, {}, "config file is empty"),
        ("!!python/object:os.system {}", {}, {}, "only plain YAML is loaded"),
        ("- a\n- b\n", {}, {}, "expected a mapping of settings"),
        ("sqlite: {path: ':memory:'}", {}, {}, "in-memory database loses every run"),
        ("sqlite: {path: rel/mlflow.db}", {}, {}, "is relative; give an absolute path"),
        ("postgres: {provider: podman}", {}, {}, "postgres.provider = 'podman' is not one of"),
    ],
)
def test_bad_config_is_refused_with_its_source(tmp_path, yaml_text, environ, flags, expected):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, yaml_text, environ=environ, **flags)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_error_names_the_file_that_supplied_the_value(tmp_path):
    with pytest.raises(ConfigError, match=r"user\.yaml: server\.port"):
        load(tmp_path, "server: {port: 99999}")


def test_empty_user_file_and_missing_explicit_file_are_refused(tmp_path):
    assert load(tmp_path, "{}").settings.backend == "sqlite"
    with pytest.raises(ConfigError, match="user.yaml: config file is empty"):
        load(tmp_path, "# only a comment\n")
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(config_file=str(tmp_path / "nope.yaml"), environ={})


def test_unknown_profile_suggests_a_known_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown profile 'cii' \(did you mean 'ci'\?\)"):
        load_settings(profile="cii", config_file=None, environ={})


def test_password_with_uri_characters_is_quoted_and_masked(tmp_path):
    s = load(tmp_path, "backend: postgres\npostgres: {password: 'p@ss:w#rd%/?'}").settings
    assert backend_store_uri(s) == "postgresql+psycopg2://mlflow_user:***@127.0.0.1:3110/mlflow"
    assert (
        backend_store_uri(s, reveal=True)
        == "postgresql+psycopg2://mlflow_user:p%40ss%3Aw%23rd%25%2F%3F@127.0.0.1:3110/mlflow"
    )
    assert all("p@ss" not in value for _, value, _ in as_rows(load(tmp_path, "postgres: {password: 'p@ss'}")))


def test_external_uri_gets_the_psycopg2_dialect_and_is_masked(tmp_path):
    s = load(tmp_path, "postgres: {provider: external, uri: 'postgresql://u:secret@db:5432/m'}").settings
    assert postgres_uri(s, reveal=True) == "postgresql+psycopg2://u:secret@db:5432/m"
    assert postgres_uri(s) == "postgresql+psycopg2://u:***@db:5432/m"


def test_store_uri_for_processes_holds_no_password_and_the_env_carries_it(tmp_path):
    from tasks.libs.core.credentials import store_uri_and_password_env

    local = load(tmp_path, backend="postgres", **{"postgres.password": "p@ss:w#rd%/?&="}).settings
    uri, env = store_uri_and_password_env(local)
    assert uri.startswith("postgresql+psycopg2://mlflow_user@127.0.0.1:") and "p%40ss" not in uri
    assert env == {"PGPASSWORD": "p@ss:w#rd%/?&="}
    external = load(
        tmp_path,
        backend="postgres",
        **{"postgres.provider": "external", "postgres.uri": "postgresql://u:se%40cret@db:5432/m?sslmode=require"},
    ).settings
    assert store_uri_and_password_env(external) == (
        "postgresql+psycopg2://u@db:5432/m?sslmode=require",
        {"PGPASSWORD": "se@cret"},
    )
    assert store_uri_and_password_env(load(tmp_path).settings)[1] == {}


def test_external_uri_without_a_password_takes_postgres_password(tmp_path):
    from tasks.libs.core.credentials import store_uri_and_password_env

    settings = load(
        tmp_path,
        backend="postgres",
        **{"postgres.provider": "external", "postgres.password": "pw@x", "postgres.uri": "postgresql://u@db:5432/m"},
    ).settings
    assert store_uri_and_password_env(settings) == ("postgresql+psycopg2://u@db:5432/m", {"PGPASSWORD": "pw@x"})


def test_workers_auto_is_one_per_core(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert load(tmp_path).settings.server.workers == 6  # the default is auto
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert load(tmp_path).settings.server.workers == 8
    assert load(tmp_path, "server: {workers: 3}").settings.server.workers == 3
