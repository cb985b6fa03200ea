"""The docker provider against a fake engine that fails the way docker-py fails."""

import time

import pytest

from tasks.libs.core.errors import UserError
from tasks.libs.postgres.container import LABEL, ROLE, DockerPostgres, engine_answers
from tasks.libs.postgres.providers import provider_for
from tests.support.fake_docker import FakeDocker, no_engine
from tests.support.settings import make_settings

OURS = {LABEL: ROLE}


@pytest.fixture
def settings(state_dir):
    return make_settings(
        state_dir,
        backend="postgres",
        # No stand-in on a fake engine (it builds nothing): an image that cannot be pulled is an error.
        **{
            "postgres.provider": "docker",
            "postgres.password": "pw",
            "postgres.start_timeout": 5,
            "engine.images.fallback": "none",
        },
    )


def provider(settings, engine):
    ready_calls = []
    db = DockerPostgres(
        settings,
        client_factory=lambda: engine,
        database_ready=lambda s, timeout: ready_calls.append(s.postgres.password.get_secret_value()),
    )
    return db, ready_calls


def test_no_engine_says_use_the_local_provider(settings):
    db = DockerPostgres(settings, client_factory=no_engine)
    with pytest.raises(UserError, match=r"no Docker engine answers .*use the local provider"):
        db.start()
    assert not engine_answers(no_engine)


def test_auto_picks_local_when_no_engine_answers(settings):
    auto = settings.model_copy(deep=True)
    auto.postgres.provider = "auto"
    assert provider_for(auto, docker_client_factory=no_engine).name == "local"


def test_missing_image_is_pulled_then_a_labelled_container_runs_on_loopback(settings):
    engine = FakeDocker(pullable={"postgres:15"})
    db, ready = provider(settings, engine)
    assert "created and started" in db.start()
    assert ("pull", "postgres:15") in engine.calls and ready == ["pw"]
    container = engine.containers_by_name["mlflow-ops-postgres"]
    assert container.labels == OURS
    assert container.kwargs["ports"] == {"5432/tcp": ("127.0.0.1", settings.postgres.port)}
    assert "pg_isready" in container.kwargs["healthcheck"]["test"][1]
    assert container.kwargs["environment"]["POSTGRES_DB"] == "mlflow"


def test_image_that_cannot_be_pulled_is_one_clear_error(settings):
    db, _ = provider(settings, FakeDocker())
    with pytest.raises(UserError, match=r"image postgres:15 is not here and could not be pulled \(pull access denied"):
        db.start()


def test_an_image_the_stand_in_cannot_replace_is_one_clear_error(settings):
    settings.engine.images.fallback = "debian"
    settings.postgres.docker.image = "postgres:16"
    db, _ = provider(settings, FakeDocker())
    with pytest.raises(UserError, match=r"could not be pulled .* the stand-in is PostgreSQL 15 .*postgres:15$"):
        db.start()


def test_existing_container_of_ours_is_reused_not_recreated(settings):
    engine = FakeDocker(images={"postgres:15"})
    engine.add_container("mlflow-ops-postgres", OURS, status="exited")
    db, _ = provider(settings, engine)
    assert "started (existing container)" in db.start()
    assert "already running (reused)" in db.start()
    assert not [call for call in engine.calls if call[0] == "run"]


def test_container_of_the_same_name_not_ours_is_never_adopted(settings):
    engine = FakeDocker(images={"postgres:15"})
    engine.add_container("mlflow-ops-postgres", {"owner": "someone"}, status="running")
    db, _ = provider(settings, engine)
    with pytest.raises(UserError, match="mlflow-ops did not create it"):
        db.start()
    with pytest.raises(UserError, match="mlflow-ops did not create it"):
        db.stop()


def test_name_conflict_from_a_concurrent_start_reuses_that_container(settings):
    engine = FakeDocker(images={"postgres:15"})
    engine.race_on_create = True
    db, _ = provider(settings, engine)
    assert "created and started" in db.start()
    assert engine.containers_by_name["mlflow-ops-postgres"].status == "running"


def test_container_that_exits_during_start_shows_its_log(settings):
    db, _ = provider(settings, FakeDocker(images={"postgres:15"}, exits=True))
    with pytest.raises(UserError, match=r"exited during start-up\n.*\n.*wrong ownership"):
        db.start()


def test_container_never_healthy_times_out(settings):
    settings.postgres.start_timeout = 1
    db, _ = provider(settings, FakeDocker(images={"postgres:15"}, health="starting"))
    with pytest.raises(UserError, match=r"did not become ready within 1 s \(health: starting\)"):
        db.start()


def test_container_turning_unhealthy_fails_at_once(settings):
    settings.postgres.start_timeout = 60
    db, ready = provider(settings, FakeDocker(images={"postgres:15"}, health="unhealthy"))
    began = time.monotonic()
    with pytest.raises(UserError, match="is unhealthy"):
        db.start()
    assert time.monotonic() - began < 10 and ready == []


def test_stop_status_and_wipe(settings):
    engine = FakeDocker(images={"postgres:15"})
    db, _ = provider(settings, engine)
    assert "no container" in db.stop()
    db.start()
    assert db.status()["health"] == "healthy"
    assert "stopped container" in db.stop() and not db.status()["running"]
    db.wipe()
    assert not engine.containers_by_name and not engine.volumes_by_name
