"""The known-fixed data file: its schema, its sources, and the verdicts the version probe draws from it."""

from __future__ import annotations

import pytest
import yaml

from tasks.libs.core.errors import UserError
from tasks.libs.security.suite import all_probes
from tasks.libs.security.target import KNOWN_FIXED
from tasks.libs.security.versions import affecting, load, unfixed


@pytest.fixture(scope="module")
def entries():
    return load(KNOWN_FIXED)


def ids(found) -> set[str]:
    return {e.id for e in found}


def test_every_entry_has_sources_and_names_a_real_probe(entries):
    assert len(entries) >= 29
    probes = {p.name for p in all_probes()}
    for entry in entries:
        assert entry.id.startswith("CVE-"), entry.id
        assert entry.sources and all(s.startswith("https://") for s in entry.sources), entry.id
        assert entry.probe in probes, (entry.id, entry.probe)
    raw = yaml.safe_load(KNOWN_FIXED.read_text())["entries"]
    assert len({e["id"] for e in raw}) == len(raw)


def test_the_verified_release_is_affected_by_nothing_fixed(entries):
    assert affecting("3.17.2", entries) == []
    assert ids(unfixed(entries)) == {"CVE-2024-1594", "CVE-2026-53995"}


def test_old_releases_are_affected_by_what_was_fixed_after_them(entries):
    assert {"CVE-2023-6831", "CVE-2024-1560", "CVE-2024-1483", "CVE-2026-2635"} <= ids(affecting("2.9.1", entries))
    assert "CVE-2023-6831" not in ids(affecting("2.9.2", entries))
    assert ids(affecting("3.16.0", entries)) == {"CVE-2026-2635"}
    assert affecting("3.16.1", entries) == []


def test_where_sources_disagree_the_later_fix_is_kept(entries):
    by_id = {e.id: e for e in entries}
    assert str(by_id["CVE-2026-2635"].fixed_in) == "3.16.1"  # GHSA says 3.8.0rc0; mlflow#25751 shipped 3.16.1
    assert str(by_id["CVE-2024-1483"].fixed_in) == "2.12.1"  # nuclei says 2.10.0


def test_a_fix_on_two_lines_affects_only_its_ranges(entries):
    assert "CVE-2025-11201" in ids(affecting("2.22.3", entries))
    assert "CVE-2025-11201" not in ids(affecting("2.22.4", entries))
    assert "CVE-2025-11201" in ids(affecting("3.0.0rc1", entries))
    assert "CVE-2025-11201" not in ids(affecting("3.0.0", entries))


def test_a_file_store_hole_does_not_count_against_a_sql_store(entries):
    by_id = {e.id: e for e in entries}
    assert by_id["CVE-2026-53995"].stores == ("file",)
    assert not by_id["CVE-2026-53995"].applies_to("sqlite")
    assert by_id["CVE-2026-53995"].applies_to(None)


def test_a_version_that_is_no_version_is_refused(entries):
    with pytest.raises(ValueError, match="not a version"):
        affecting("<html>", entries)


def test_a_broken_data_file_is_one_line_naming_the_entry(tmp_path):
    bad = tmp_path / "known.yaml"
    bad.write_text("entries:\n  - id: CVE-1\n    class: x\n")
    with pytest.raises(UserError, match=r"entry CVE-1 lacks endpoint, request, fixed_in"):
        load(bad)
    bad.write_text(KNOWN_FIXED.read_text().replace('fixed_in: "2.9.2"', 'fixed_in: "two"', 1))
    with pytest.raises(UserError, match="Invalid version"):
        load(bad)
    with pytest.raises(UserError, match="cannot read the known-fixed data"):
        load(tmp_path / "missing.yaml")
