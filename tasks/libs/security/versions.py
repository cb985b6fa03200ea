"""The known-fixed data (data/security/mlflow_known_fixed.yaml) and the `version` probe.

Each entry is a hole MLflow servers have had, the releases it affects and the sources that
say so. The probe reads the server's version from GET /version and FAILs when any entry
affects it; holes with no fixed release are named in the reason and left to the live probes.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.version import InvalidVersion, Version

from tasks.libs.core.errors import UserError
from tasks.libs.reporting.records import CheckFailed
from tasks.libs.security.target import Session, Target

REQUIRED = ("id", "class", "endpoint", "request", "fixed_in", "fixed_basis", "probe", "sources")
BASES = ("cna", "ghsa", "pysec", "inferred", "none")
STORES = ("file", "sqlite", "postgres")
# Plain version order, as advisories mean it (OSV's introduced/fixed), not PEP 440 specifiers:
# for those, "<3.0.0" leaves out 3.0.0rc1, which an advisory's "<3.0.0" includes.
OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
CLAUSE = re.compile(r"^\s*(<=|>=|==|<|>)\s*(\S+)\s*$")

Range = tuple[tuple[str, Version], ...]  # every clause must hold


def parse_range(text: str) -> Range:
    """ ">=3.0.0rc0,<3.0.0" -> ((">=", 3.0.0rc0), ("<", 3.0.0)); ValueError when malformed."""
    clauses = []
    for part in text.split(","):
        match = CLAUSE.match(part)
        if not match:
            raise ValueError(f"range {text!r}: {part.strip()!r} is not <, <=, >, >= or == a version")
        clauses.append((match[1], Version(match[2])))
    return tuple(clauses)


@dataclass(frozen=True)
class Entry:
    id: str
    cls: str
    fixed_in: Version | None
    affected: tuple[Range, ...]  # any range holding = affected; empty when nothing is fixed
    probe: str
    stores: tuple[str, ...]  # backend stores it applies to; empty = all
    sources: tuple[str, ...]

    def affects(self, version: Version) -> bool:
        return any(all(OPERATORS[op](version, bound) for op, bound in clauses) for clauses in self.affected)

    def applies_to(self, store: str | None) -> bool:
        return not self.stores or store is None or store in self.stores


def load(path: Path) -> list[Entry]:
    """Every entry, validated: a broken data file is a one-line UserError naming the entry."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(
            f"cannot read the known-fixed data {path}: {exc.strerror}; check security.known_fixed"
        ) from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise UserError(f"{path}: expected a mapping with a list under 'entries'")
    entries, seen = [], set()
    for raw in doc["entries"]:
        entry = _entry(raw, path)
        if entry.id in seen:
            raise UserError(f"{path}: {entry.id} is listed twice")
        seen.add(entry.id)
        entries.append(entry)
    return entries


def _entry(raw: dict, path: Path) -> Entry:
    name = raw.get("id", "?") if isinstance(raw, dict) else "?"
    if not isinstance(raw, dict) or any(key not in raw for key in REQUIRED):
        missing = [key for key in REQUIRED if not isinstance(raw, dict) or key not in raw]
        raise UserError(f"{path}: entry {name} lacks {', '.join(missing)}")
    if not raw["sources"]:
        raise UserError(f"{path}: {name} names no source")
    if raw["fixed_basis"] not in BASES:
        raise UserError(f"{path}: {name}: fixed_basis {raw['fixed_basis']!r} is not one of {', '.join(BASES)}")
    try:
        fixed = Version(str(raw["fixed_in"])) if raw["fixed_in"] else None
        ranges = raw.get("affected") or ([f"<{fixed}"] if fixed else [])
        affected = tuple(parse_range(str(spec)) for spec in ranges)
    except (InvalidVersion, ValueError) as exc:
        raise UserError(f"{path}: {name}: {exc}") from None
    stores = tuple(raw.get("stores") or ())
    if set(stores) - set(STORES):
        raise UserError(f"{path}: {name}: stores must be among {', '.join(STORES)}")
    return Entry(name, raw["class"], fixed, affected, raw["probe"], stores, tuple(raw["sources"]))


def affecting(version: str, entries: list[Entry], *, store: str | None = None) -> list[Entry]:
    """Entries whose affected releases include version (store: skip entries of other stores)."""
    try:
        v = Version(version)
    except InvalidVersion:
        raise ValueError(f"not a version: {version!r}") from None
    return [e for e in entries if e.applies_to(store) and e.affects(v)]


def unfixed(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if e.fixed_in is None]


def check_version(target: Target) -> str:
    s = Session(target)
    answer = s.get("/version")
    if answer.status == 401 and target.credentials:
        answer = s.get("/version", auth=True)
    s.needs_auth(answer, "/version")
    if answer.status != 200:
        raise CheckFailed(f"/version answered HTTP {answer.status}, not the server's version: {answer.text[:80]!r}")
    version = answer.text.strip()[:40]
    target.server_version = version
    entries = load(target.known_fixed)
    store = target.local.backend if target.local else None
    try:
        hits = affecting(version, entries, store=store)
    except ValueError:
        raise CheckFailed(f"/version answered {version[:40]!r}, which is not a version") from None
    if hits:
        named = ", ".join(f"{e.id} (fixed in {e.fixed_in or 'no release'})" for e in hits[:5])
        more = f" and {len(hits) - 5} more" if len(hits) > 5 else ""
        raise CheckFailed(f"MLflow {version} is affected by {named}{more}; upgrade (data: {target.known_fixed.name})")
    fixed = sum(e.fixed_in is not None for e in entries)
    notes = []
    for e in unfixed(entries):
        where = "" if e.applies_to(store) else f", not this {store} store"
        scope = f" ({'/'.join(e.stores)} store only{where})" if e.stores else ""
        notes.append(f"{e.id}{scope}")
    tail = f"; no fixed release for {', '.join(notes)}: left to the live probes" if notes else ""
    return f"MLflow {version} is past every fixed release on record ({fixed} CVEs){tail}"
