"""How every report writes numbers, sizes, tables and times: one spelling for each.

A missing figure (None, or NaN from a metric logged as NaN or a ratio without data) is "-" in a
table and null in JSON, never the string "nan"; bytes are binary units in prose (KiB, MiB),
whole megabytes (2**20) in bench columns; folder names carry the local time.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

MISSING = "-"


def missing(value: Any) -> bool:
    """None or NaN: nothing to show."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value: Any, digits: int = 1) -> str:
    """A figure for a table: fixed digits with thousands separators, "-" when missing."""
    if missing(value):
        return MISSING
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def percent(value: Any, digits: int = 0) -> str:
    """0.42 -> '42%'."""
    return MISSING if missing(value) else f"{value:.{digits}%}"


def megabytes(value: Any) -> str:
    """Bytes as whole MiB with separators (the bench's memory columns)."""
    return MISSING if missing(value) else f"{value / 2**20:,.0f}"


def human_bytes(value: int | float | None) -> str:
    """Bytes in the largest binary unit below 1024 of it: '512 B', '3.4 MiB', '1.2 GiB'."""
    if missing(value):
        return MISSING
    assert value is not None
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # not reached; the loop returns at GiB


def json_safe(value: Any, *, digits: int | None = None) -> Any:
    """value for strict JSON: NaN and infinities become null, tuples lists, keys strings;
    digits rounds floats (the bench keeps 6)."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return round(value, digits) if digits is not None else value
    if isinstance(value, dict):
        return {str(k): json_safe(v, digits=digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, digits=digits) for v in value]
    return value


def table(
    rows: Iterable[Sequence[Any]], headers: Sequence[str] = (), *, markdown: bool = False, plain: bool = False
) -> str:
    """A table as the terminal shows it ("simple"), as Markdown ("github"), or without rules ("plain").

    Cells are shown as given (no number parsing: "0012" and "1e3" stay what the caller wrote).
    """
    style = "github" if markdown else "plain" if plain else "simple"
    return tabulate(list(rows), headers=list(headers), tablefmt=style, disable_numparse=True)


def stamp(when: dt.datetime | None = None) -> str:
    """The local time as a folder name sorts it: 20261204-153300."""
    return (when or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")


def new_report_dir(root: Path, prefix: str = "", *, when: dt.datetime | None = None) -> Path:
    """root/<prefix>-<stamp> (root/<stamp> without a prefix), made now; a second one in the same
    second gets a random suffix instead of sharing the folder."""
    name = f"{prefix}-{stamp(when)}" if prefix else stamp(when)
    path = root / name
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            path = root / f"{name}-{secrets.token_hex(2)}"
