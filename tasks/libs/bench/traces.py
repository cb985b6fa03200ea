"""Trace ingestion for the scale bench, in a child process of its own (MLflow's tracing is global state).

    python -m tasks.libs.bench.traces sdk|otlp URL EXPERIMENT_ID TRACES SPANS_PER_TRACE

prints one JSON line: {"spans": n, "seconds": s, "spans_per_s": r}. Timed from the first span
to the last export acknowledged by the server:

  sdk   MLflow's own client: mlflow.start_span, TRACES traces of SPANS_PER_TRACE spans each,
        exported synchronously (MLFLOW_ENABLE_ASYNC_TRACE_LOGGING=false), so a trace counts
        once the server has stored it.
  otlp  OpenTelemetry's SDK with its OTLP/HTTP protobuf exporter (opentelemetry-exporter-otlp-proto-http)
        posting to the server's `POST /v1/traces`, which needs the experiment in the
        x-mlflow-experiment-id header (mlflow/server/otel_api.py); a batch span processor, then
        force_flush.
"""

from __future__ import annotations

import json
import os
import sys
import time


def sdk(url: str, experiment_id: str, traces: int, spans: int) -> dict:
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
    import mlflow

    mlflow.set_tracking_uri(url)
    mlflow.set_experiment(experiment_id=experiment_id)
    began = time.perf_counter()
    for i in range(traces):
        with mlflow.start_span(name=f"root-{i}") as root:
            root.set_inputs({"i": i})
            for k in range(spans - 1):
                with mlflow.start_span(name=f"child-{k}") as child:
                    child.set_attribute("k", k)
            root.set_outputs({"ok": True})
    seconds = time.perf_counter() - began
    return {"spans": traces * spans, "seconds": seconds, "spans_per_s": traces * spans / seconds}


def otlp(url: str, experiment_id: str, traces: int, spans: int) -> dict:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers={"x-mlflow-experiment-id": experiment_id})
    provider = TracerProvider(resource=Resource.create({"service.name": "mlflow-ops-bench"}))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=100_000, max_export_batch_size=512))
    tracer = provider.get_tracer("mlflow-ops-bench")
    began = time.perf_counter()
    for i in range(traces):
        with tracer.start_as_current_span(f"root-{i}") as root:
            root.set_attribute("i", i)
            for k in range(spans - 1):
                with tracer.start_as_current_span(f"child-{k}") as child:
                    child.set_attribute("k", k)
    if not provider.force_flush(timeout_millis=600_000):
        raise SystemExit("the OTLP exporter did not flush within 600 s")
    seconds = time.perf_counter() - began
    provider.shutdown()
    return {"spans": traces * spans, "seconds": seconds, "spans_per_s": traces * spans / seconds}


def main(argv: list[str]) -> None:
    mode, url, experiment_id, traces, spans = argv
    result = {"sdk": sdk, "otlp": otlp}[mode](url, experiment_id, int(traces), int(spans))
    print("MLFLOW-OPS-TRACES " + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
