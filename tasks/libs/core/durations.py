"""Durations written the way `mlflow gc --older-than` takes them: 30d, 24h, 1d2h30m, 90s."""

from __future__ import annotations

import re

# The grammar of `mlflow gc --older-than` (days, hours, minutes, seconds, in that order,
# decimals allowed), so a value we accept is one MLflow accepts too.
_PATTERN = re.compile(
    r"^(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$"
)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """Seconds in text like '30d' or '1d2h'; ValueError with a one-line reason otherwise."""
    value = str(text).strip()
    match = _PATTERN.match(value)
    if not value or match is None or not any(match.groupdict().values()):
        raise ValueError(f"{text!r} is not a duration; write e.g. 30d, 24h, 1d12h, 45m or 90s")
    return sum(float(amount) * _SECONDS[unit] for unit, amount in match.groupdict().items() if amount)


def format_duration(seconds: float) -> str:
    """A short human form: '3 d 4 h', '12 min', '8 s'."""
    seconds = max(0.0, seconds)
    if seconds >= 86400:
        days, rest = divmod(seconds, 86400)
        return f"{int(days)} d {int(rest // 3600)} h"
    if seconds >= 3600:
        hours, rest = divmod(seconds, 3600)
        return f"{int(hours)} h {int(rest // 60)} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min"
    return f"{seconds:.0f} s"
