"""The Prometheus files we write pass Debian's promtool, their alerts fire on the shapes MLflow,
HAProxy and postgres_exporter really export, and a planted error fails the check."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tasks.libs.core.errors import UserError
from tasks.libs.monitoring.prometheus import (
    ScrapeTargets,
    promtool,
    promtool_check,
    promtool_reason,
    write_prometheus_files,
)
from tests.support.settings import make_settings

pytestmark = pytest.mark.integration
RULES_TEST = "tests/support/rules_test.yml"


@pytest.fixture
def files(tmp_path):
    monitoring = make_settings(tmp_path).monitoring
    targets = ScrapeTargets(
        ["127.0.0.1:3121", "127.0.0.1:3122"],
        haproxy="127.0.0.1:3129",
        haproxy_backend="replicas",
        postgres_exporter="127.0.0.1:3128",
    )
    return write_prometheus_files(tmp_path / "monitoring", targets, monitoring, postgres=True)


def test_promtool_passes_what_we_write_and_every_alert_fires_on_real_shapes(files):
    from tasks.libs.core.settings import PROJECT_ROOT

    assert files.checked == ["promtool check config: SUCCESS", "promtool check rules: SUCCESS"]
    shutil.copy(PROJECT_ROOT / RULES_TEST, files.config.parent / "rules_test.yml")
    result = promtool("test", "rules", str(files.config.parent / "rules_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_expression_fails_the_rules_check_in_one_line(files):
    rules = yaml.safe_load(files.rules.read_text())
    rules["groups"][0]["rules"][0]["expr"] = 'up{job="mlflow"} =='
    files.rules.write_text(yaml.safe_dump(rules))
    with pytest.raises(UserError) as exc:
        promtool_check(files.config, files.rules)
    assert "promtool check config refused prometheus.yml" in str(exc.value)
    assert "could not parse expression" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "plant, expected",
    [
        (lambda c: c["global"].update(scrape_interval="15x"), 'not a valid duration string: "15x"'),
        (lambda c: c.update(rule_files=["missing.rules.yml"]), "does not point to an existing file"),
    ],
)
def test_a_planted_config_error_fails_promtool(files, plant, expected):
    config = yaml.safe_load(files.config.read_text())
    plant(config)
    files.config.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(files.config))
    assert result.returncode != 0 and expected in promtool_reason(result)
    with pytest.raises(UserError, match="promtool check config refused"):
        promtool_check(files.config, files.rules)


def test_an_alert_that_does_not_fire_as_expected_fails_the_rules_test(files):
    from tasks.libs.core.settings import PROJECT_ROOT

    wrong = (PROJECT_ROOT / RULES_TEST).read_text().replace("987.5ms", "12ms")
    (files.config.parent / "rules_test.yml").write_text(wrong)
    result = promtool("test", "rules", str(files.config.parent / "rules_test.yml"))
    assert result.returncode != 0 and "MlflowHighP95Latency" in result.stdout + result.stderr
