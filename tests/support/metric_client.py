"""One logging client for the fault tests, run as its own process.

    python tests/_metric_client.py URL OUT_FILE STOP_FILE NAME [MAX_STEPS]

Creates a run, then calls log_metric("m", step, step=step) until STOP_FILE exists or MAX_STEPS
calls were made. Every call's outcome goes to OUT_FILE as it happens, one line each, flushed:
"RUN <run_id>", then "OK <step>" when the call returned, "FAIL <step> <error type>" when it
raised. The test compares these acknowledgements with what the store holds. Retries are the
caller's choice (MLFLOW_HTTP_REQUEST_MAX_RETRIES in the environment).
"""

import os
import sys
import time


def main(url: str, out_file: str, stop_file: str, name: str, max_steps: int) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    with open(out_file, "w", buffering=1) as out:
        try:
            exp = client.get_experiment_by_name("faults")
            exp_id = exp.experiment_id if exp else _create_experiment(client)
            run_id = client.create_run(exp_id, run_name=name).info.run_id
        except Exception as exc:  # the server is unusable before the first metric: say so
            out.write(f"SETUP-FAILED {type(exc).__name__}\n")
            return 2
        out.write(f"RUN {run_id}\n")
        for step in range(max_steps):
            if os.path.exists(stop_file):
                break
            try:
                client.log_metric(run_id, "m", float(step), step=step)
            except Exception as exc:
                out.write(f"FAIL {step} {type(exc).__name__}\n")
                time.sleep(0.05)  # pacing while the server is down, not a readiness wait
            else:
                out.write(f"OK {step}\n")
    return 0


def _create_experiment(client) -> str:
    try:
        return client.create_experiment("faults")
    except Exception:  # another client created it first
        return client.get_experiment_by_name("faults").experiment_id


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args[0], args[1], args[2], args[3], int(args[4]) if len(args) > 4 else 10**9))
