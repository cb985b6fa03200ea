"""What a destructive operation is doing, on disk, so that the run after a SIGKILL can say what happened.

`<state_dir>/lifecycle/<operation>-<backend>.journal` holds JSON: who runs it (pid and the
process's start time, so a reused pid is not mistaken for it), the target (masked) and every
step begun so far, each with what the store looks like if the run dies during that step and
what to do then. It is written and fsync'd before each step begins and removed when the
operation ends, so a journal whose process is gone means: killed (or the machine stopped).

`StepTable` times the steps for the report the tasks print; each step it runs is also a
journal step when a journal is attached.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.reporting.formats import table


def journal_dir(settings: Settings) -> Path:
    return settings.state_path / "lifecycle"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _identity(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(data: dict[str, Any]) -> bool:
    """The journal's writer still runs (same pid and the same process start time)."""
    started = _identity(int(data.get("pid", -1)))
    return started is not None and abs(started - float(data.get("create_time", 0))) < 1.0


class Journal:
    """One destructive operation's journal; use as a context manager around the operation."""

    def __init__(self, settings: Settings, operation: str, backend: str, target: str):
        self.path = journal_dir(settings) / f"{operation}-{backend}.journal"
        self.data: dict[str, Any] = {
            "operation": operation,
            "backend": backend,
            "target": target,  # masked: the journal is shown to the user
            "pid": os.getpid(),
            "create_time": _identity(os.getpid()),
            "started": _now(),
            "steps": [],
        }

    def __enter__(self) -> Journal:
        previous = read_journal(self.path)
        if previous and _alive(previous) and previous.get("pid") != os.getpid():
            raise UserError(
                f"`db.{previous['operation']}` is already running on this {previous['backend']} store "
                f"(pid {previous['pid']}, since {previous['started']}); wait for it to finish"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._write()
        return self

    def step(self, name: str, *, if_interrupted: str, dirty: bool = True) -> None:
        """Record that step `name` begins; if_interrupted says what a kill now leaves and what to do.

        dirty=False: nothing is changed yet by this step (a failure may drop the journal).
        """
        self.data["steps"].append({"step": name, "at": _now(), "if_interrupted": if_interrupted, "dirty": dirty})
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def __exit__(self, exc_type, exc, tb) -> None:
        steps = self.data["steps"]
        if exc_type is None or not steps or not steps[-1].get("dirty", True):
            self.path.unlink(missing_ok=True)
        else:  # failed half-way: keep it, so the next run still says what is left
            self.data["failed"] = f"{exc_type.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self._write()


def read_journal(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {"operation": path.stem, "backend": "?", "steps": [], "pid": -1, "unreadable": True}


def interrupted(settings: Settings) -> list[dict[str, Any]]:
    """Journals whose process is gone: operations that were killed or failed half-way."""
    found = []
    for path in sorted(journal_dir(settings).glob("*.journal")):
        data = read_journal(path)
        if data is None or _alive(data):
            continue
        data["journal"] = str(path)
        found.append(data)
    return found


def interruption_notes(settings: Settings) -> list[str]:
    """One line per interrupted operation: when, in which step, what that leaves, what to do."""
    notes = []
    for data in interrupted(settings):
        steps = data.get("steps") or []
        how = f"failed ({data['failed']})" if data.get("failed") else "was killed"
        if steps:
            last = steps[-1]
            where = f"during '{last['step']}' (begun {last['at']})"
            advice = last["if_interrupted"]
        else:
            where, advice = "before its first step", "nothing was changed"
        notes.append(
            f"NOTE: `db.{data['operation']}` on the {data.get('backend', '?')} store {how} {where}: {advice} "
            f"(this note goes when `db.{data['operation']}` completes there, or delete {data['journal']})"
        )
    return notes


@dataclass
class StepRow:
    name: str
    seconds: float = 0.0
    status: str = "ok"  # ok | FAIL | skipped
    detail: str = ""


@dataclass
class StepTable:
    """Timed steps of one operation, for the table the task prints; optionally journalled."""

    journal: Journal | None = None
    rows: list[StepRow] = field(default_factory=list)
    say: Callable[[str], None] | None = None  # progress: one line as each step begins

    @contextlib.contextmanager
    def step(self, name: str, *, if_interrupted: str | None = None, dirty: bool = True) -> Iterator[StepRow]:
        if self.journal is not None and if_interrupted is not None:
            self.journal.step(name, if_interrupted=if_interrupted, dirty=dirty)
        if self.say:
            self.say(f"  {name} ...")
        row = StepRow(name)
        self.rows.append(row)
        began = time.monotonic()
        try:
            yield row
        except BaseException as exc:
            row.status = "FAIL"
            row.detail = row.detail or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        finally:
            row.seconds = time.monotonic() - began

    def skip(self, name: str, reason: str) -> None:
        self.rows.append(StepRow(name, 0.0, "skipped", reason))

    @property
    def failed(self) -> list[StepRow]:
        return [r for r in self.rows if r.status == "FAIL"]

    def render(self) -> str:
        rows = [[r.name, f"{r.seconds:.2f} s", r.status, r.detail] for r in self.rows]
        total = sum(r.seconds for r in self.rows)
        return table([*rows, ["total", f"{total:.2f} s", "", ""]], ["step", "time", "result", "detail"])

    def as_dicts(self) -> list[dict[str, Any]]:
        return [
            {"step": r.name, "seconds": round(r.seconds, 3), "status": r.status, "detail": r.detail} for r in self.rows
        ]
