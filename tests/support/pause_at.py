"""Run `inv ARGS` as a user does, but stop for good once the lifecycle journal records STEP.

    python -m tests.support.pause_at STEP -- db.restore --force

The fault tests SIGKILL this process group while it waits: the tool dies exactly when STEP has
begun (its journal says so) and before STEP's action, a point too brief to hit by timing.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> None:
    step, args = argv[0], argv[argv.index("--") + 1 :]
    from invoke.main import program

    from tasks.libs.lifecycle.internals import journal

    original = journal.Journal.step

    def step_then_wait(self, name, **kwargs):
        original(self, name, **kwargs)
        if name == step:
            print("PAUSED", flush=True)
            time.sleep(600)

    journal.Journal.step = step_then_wait  # type: ignore[method-assign]
    program.run(["inv", *args])


if __name__ == "__main__":
    main(sys.argv[1:])
