"""Checks 8-9: what MLflow 3 is used for besides runs and models, GenAI traces and prompts.

tracing: a trace of nested spans logged through the SDK must be found by search_traces and read
back by get_trace with its spans and attributes; a span sent by the OpenTelemetry SDK's own
OTLP/HTTP exporter to /v1/traces (where collectors and non-Python agents send) must appear as a
trace in the experiment. The SDK exports best-effort (its errors are log lines, never raised), so
the check listens to MLflow's tracing loggers and reports what they said when a trace is missing;
the OTLP answer is read from the exporter's own HTTP session.

prompts: a prompt and a second version are registered, then loaded by version and by alias.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests

from tasks.libs.checks.context import CheckContext
from tasks.libs.checks.failures import describe_error
from tasks.libs.reporting.records import CheckFailed

OTLP_PATH = "/v1/traces"
SEARCH_ENDPOINT = "/api/3.0/mlflow/traces/search"
OTLP_TIMEOUT_S = 10.0
TRACE_ATTRIBUTE = "mlflow_ops.check"  # on every span the check makes
# (span name, parent span name, span type): three levels under one root.
SDK_SPANS = (("answer", None, "CHAIN"), ("retrieve", "answer", "RETRIEVER"), ("embed", "retrieve", "EMBEDDING"))
PROMPT_TEMPLATES = (
    "Summarise {{text}} in {{words}} words.",
    "Summarise {{text}} in at most {{words}} words, for {{audience}}.",
)
PROMPT_ALIAS = "production"


# --- tracing ---------------------------------------------------------------------------


def check_tracing(ctx: CheckContext) -> str:
    sdk = _sdk_trace(ctx)
    otlp = _otlp_trace(ctx)
    return (
        f"SDK trace {sdk}: {len(SDK_SPANS)} nested spans found by search_traces and read back with their attributes; "
        f"OTLP span via {OTLP_PATH} stored as trace {otlp} in experiment {ctx.experiment_id}"
    )


def _sdk_trace(ctx: CheckContext) -> str:
    import mlflow

    mlflow.tracing.reset()  # a tracer made for another URL or with async export must not be reused
    with _tracing_log() as said, mlflow.start_run(run_id=ctx.run_id), ctx.timed("logging call", "SDK trace, 3 spans"):
        with mlflow.start_span(name=SDK_SPANS[0][0], span_type=SDK_SPANS[0][2]) as root:
            mlflow.update_current_trace(tags={TRACE_ATTRIBUTE: ctx.trace_name})
            root.set_inputs({"check": ctx.trace_name})
            root.set_attribute(TRACE_ATTRIBUTE, ctx.trace_name)
            with mlflow.start_span(name=SDK_SPANS[1][0], span_type=SDK_SPANS[1][2]) as child:
                child.set_attribute(TRACE_ATTRIBUTE, "retrieve")
                with mlflow.start_span(name=SDK_SPANS[2][0], span_type=SDK_SPANS[2][2]) as leaf:
                    leaf.set_attribute(TRACE_ATTRIBUTE, "embed")
                    leaf.set_outputs([0.25, 0.5])
                child.set_outputs({"documents": 2})
            root.set_outputs({"answer": "eleven checks"})
        trace_id = root.trace_id
    ctx.trace_ids.append(trace_id)
    why = f"; MLflow's tracing said: {said[-1]}" if said else ""
    try:
        found = [t.info.trace_id for t in _search(ctx, f"tag.`{TRACE_ATTRIBUTE}` = '{ctx.trace_name}'")]
    except Exception as exc:
        raise CheckFailed(f"search_traces failed: {_server_says(ctx, exc)}{why}") from None
    if trace_id not in found:
        raise CheckFailed(f"search_traces does not find the SDK's trace {trace_id} (found {found}){why}")
    trace = ctx.client.get_trace(trace_id)
    spans = {s.name: s for s in trace.data.spans}
    by_id = {s.span_id: s.name for s in trace.data.spans}
    got = sorted((s.name, by_id.get(s.parent_id) if s.parent_id else None, s.span_type) for s in trace.data.spans)
    if got != sorted(SDK_SPANS, key=lambda s: s[0]):
        raise CheckFailed(f"get_trace returns spans {got}, expected {sorted(SDK_SPANS)}")
    if spans["answer"].attributes.get(TRACE_ATTRIBUTE) != ctx.trace_name or spans["embed"].outputs != [0.25, 0.5]:
        raise CheckFailed(
            f"span attributes read back wrong: answer {spans['answer'].attributes.get(TRACE_ATTRIBUTE)!r}, "
            f"embed outputs {spans['embed'].outputs!r}"
        )
    if trace.info.experiment_id != ctx.experiment_id:
        raise CheckFailed(f"trace {trace_id} is in experiment {trace.info.experiment_id}, not {ctx.experiment_id}")
    return trace_id


def _server_says(ctx: CheckContext, exc: Exception) -> str:
    """Why the trace search failed, in the server's words: MLflow's client gives up on a 5xx
    without reading the answer, so the request is sent once more and the answer read."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    body = {"locations": [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": ctx.experiment_id}}]}
    try:
        answer = http_request(
            get_default_host_creds(ctx.url),
            SEARCH_ENDPOINT,
            "POST",
            json=body,
            max_retries=0,
            retry_codes=(),
            raise_on_status=False,
        )
        message = answer.json().get("message") if answer.status_code != 200 else None
    except Exception:
        message, answer = None, None
    if not message or answer is None:
        return describe_error(exc, ctx.url)
    return f"the server answered HTTP {answer.status_code} to {SEARCH_ENDPOINT}: {_one_line(message)}"


def _search(ctx: CheckContext, filter_string: str) -> list[Any]:
    return list(ctx.client.search_traces(locations=[ctx.experiment_id], filter_string=filter_string, max_results=10))


@contextlib.contextmanager
def _tracing_log(name: str = "mlflow.tracing") -> Iterator[list[str]]:
    """What a library's loggers warn about meanwhile (MLflow's SDK and OpenTelemetry's exporter
    never raise an export error)."""
    said: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(_one_line(record.getMessage()))

    handler = Keep(level=logging.WARNING)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield said
    finally:
        logger.removeHandler(handler)


def _one_line(text: str) -> str:
    text = re.sub(r"\s*\[SQL:.*", "", text, flags=re.DOTALL)
    text = re.sub(r"\s*\(Background on this error at:.*", "", text, flags=re.DOTALL)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _otlp_trace(ctx: CheckContext) -> str:
    """One span through the OpenTelemetry SDK's OTLP/HTTP exporter, then read back as an MLflow trace."""
    from mlflow.tracing.utils.otlp import build_otlp_headers
    from mlflow.utils.workspace_context import get_request_workspace
    from mlflow.utils.workspace_utils import WORKSPACE_HEADER_NAME
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    endpoint = (ctx.otlp_url or ctx.url).rstrip("/") + OTLP_PATH
    # A private provider: the span is made here and handed to the exporter, the global tracer is not touched.
    made = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "mlflow-ops-check"}))
    provider.add_span_processor(SimpleSpanProcessor(made))
    with provider.get_tracer("mlflow-ops").start_as_current_span(
        "otlp-span", attributes={TRACE_ATTRIBUTE: f"{ctx.run_name}-otlp"}
    ) as span:
        trace_id = "tr-" + format(span.get_span_context().trace_id, "032x")
    provider.shutdown()

    headers = build_otlp_headers(ctx.experiment_id or "0")  # with the client's basic-auth credentials
    headers["x-mlflow-run-id"] = ctx.run_id or ""
    if workspace := get_request_workspace():
        headers[WORKSPACE_HEADER_NAME] = workspace
    answers: list[requests.Response] = []
    session = _VerifyingSession()
    session.hooks["response"].append(lambda response, *args, **kwargs: answers.append(response))
    exporter = OTLPSpanExporter(
        endpoint=endpoint,
        headers=headers,
        timeout=OTLP_TIMEOUT_S,
        session=session,
        certificate_file=ctx.ca_file or None,  # an https server is verified with the run's CA (None: system store)
    )
    try:
        with ctx.timed("logging call", f"OTLP export to {OTLP_PATH}"), _tracing_log("opentelemetry.exporter") as said:
            result = exporter.export(made.get_finished_spans())
    finally:
        exporter.shutdown()
        session.close()
    if result != SpanExportResult.SUCCESS:
        raise CheckFailed(_otlp_refusal(endpoint, answers, said))
    ctx.trace_ids.append(trace_id)
    try:
        trace = ctx.client.get_trace(trace_id)
    except Exception as exc:
        raise CheckFailed(
            f"the OTLP export was accepted (HTTP 200) but trace {trace_id} cannot be read: {describe_error(exc, ctx.url)}"
        ) from None
    if trace.info.experiment_id != ctx.experiment_id:
        raise CheckFailed(f"the OTLP trace landed in experiment {trace.info.experiment_id}, not {ctx.experiment_id}")
    names = [(s.name, s.attributes.get(TRACE_ATTRIBUTE)) for s in trace.data.spans]
    if names != [("otlp-span", f"{ctx.run_name}-otlp")]:
        raise CheckFailed(f"the OTLP trace reads back with spans {names}")
    if trace_id not in {t.info.trace_id for t in _search(ctx, "")}:
        raise CheckFailed(f"search_traces in experiment {ctx.experiment_id} does not list the OTLP trace {trace_id}")
    return trace_id


class _VerifyingSession(requests.Session):
    """A session whose own verify (the CA the exporter was given) is what every request uses: a plain
    Session lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override it request by request."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        return super().request(*args, **kwargs)


def _otlp_refusal(endpoint: str, answers: list[Any], said: list[str]) -> str:
    if not answers:
        why = f": {said[-1]}" if said else " (connection refused or timed out)"
        return f"the OTLP exporter got no answer from {endpoint} within {OTLP_TIMEOUT_S:g} s{why}"
    last = answers[-1]
    body = _one_line(last.text or "")[:160]
    reason = f"the OpenTelemetry exporter's POST {endpoint} answered HTTP {last.status_code}: {body!r}"
    if last.status_code == 403 and "Invalid Host header" in body:
        host = urlsplit(endpoint).netloc
        reason += (
            f"; MLflow's host check refused Host {host!r}: the server's --allowed-hosts (server.allowed_hosts) "
            "must list the name collectors use with its port, since a bare name does not match name:port"
        )
    elif last.status_code in (401, 403):
        reason += "; /v1/traces needs the same sign-in as the REST API"
    return reason


# --- prompts ---------------------------------------------------------------------------


def check_prompts(ctx: CheckContext) -> str:
    client, name = ctx.client, ctx.prompt_name
    with _experiment_env(ctx.experiment_id):  # the prompt is linked to the check's experiment
        with ctx.timed("logging call", "register_prompt version 1"):
            first = client.register_prompt(name, PROMPT_TEMPLATES[0], commit_message="mlflow-ops check, version 1")
        second = client.register_prompt(name, PROMPT_TEMPLATES[1], commit_message="mlflow-ops check, version 2")
    if [str(first.version), str(second.version)] != ["1", "2"]:
        raise CheckFailed(f"prompt {name} got versions {first.version} and {second.version}, expected 1 and 2")
    client.set_prompt_alias(name, PROMPT_ALIAS, 1)
    loaded = {ref: client.load_prompt(f"prompts:/{name}{ref}") for ref in ("/1", "/2", f"@{PROMPT_ALIAS}")}
    for ref, version, template in (("/1", 1, 0), ("/2", 2, 1), (f"@{PROMPT_ALIAS}", 1, 0)):
        got = loaded[ref]
        if int(got.version) != version or got.template != PROMPT_TEMPLATES[template]:
            raise CheckFailed(
                f"prompts:/{name}{ref} loads version {got.version} with template {got.template!r}, "
                f"expected version {version}"
            )
    text = loaded["/2"].format(text="the check report", words=10, audience="operators")
    if text != "Summarise the check report in at most 10 words, for operators.":
        raise CheckFailed(f"version 2 formats to {text!r}")
    return f"{name}: versions 1-2 loaded by version, alias {PROMPT_ALIAS} -> 1 loads version 1; version 2 formats"


@contextlib.contextmanager
def _experiment_env(experiment_id: str | None) -> Iterator[None]:
    saved = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if experiment_id:
        os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = saved
