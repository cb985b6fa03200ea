"""The store lifecycle's pure parts: durations, settings, preflight, snapshots, the copy's encoding
and prescan, artifact-root rewrites, artifact merges, the gc plan. No process. Manifests and
journals: test_lifecycle_records.py."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import time

import pytest
import sqlalchemy as sa

from tasks.libs.core.durations import format_duration, parse_duration
from tasks.libs.core.errors import ConfigError, UserError
from tasks.libs.lifecycle import gc
from tasks.libs.lifecycle.internals.root_rewrite import parse_rewrite, rewrite_artifact_root
from tasks.libs.lifecycle.internals.schema_compare import diff
from tasks.libs.lifecycle.internals.snapshot import compare, norm, snapshot
from tasks.libs.lifecycle.internals.table_copy import _copy_text, make_plan
from tasks.libs.lifecycle.restore import holds_data, merge_artifacts
from tasks.libs.store.reader import open_store
from tasks.libs.store.revisions import preflight
from tests.support.settings import make_settings

CHAIN = ["a1", "b2", "c3", "d4"]


# --- durations and settings --------------------------------------------------------------


def test_durations_use_mlflow_gc_grammar():
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("1d12h") == 36 * 3600
    assert parse_duration("1.5h") == 5400 and parse_duration("90s") == 90 and parse_duration("0s") == 0
    for bad in ("", "30", "1w", "h1", "1h1d", "soon"):
        with pytest.raises(ValueError, match="is not a duration; write e.g. 30d"):
            parse_duration(bad)
    assert format_duration(90000) == "1 d 1 h" and format_duration(125) == "2 min"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("lifecycle.max_backup_age", "soon", "lifecycle.max_backup_age = 'soon': 'soon' is not a duration"),
        ("lifecycle.backups_dir", "backups", "is relative; give an absolute path"),
        ("lifecycle.rehearsal_database", "my-db", "use letters, digits and _ only"),
        ("lifecycle.keep_backups", 0, "lifecycle.keep_backups"),
    ],
)
def test_lifecycle_settings_are_checked_in_one_line(tmp_path, key, value, message):
    with pytest.raises(ConfigError) as err:
        make_settings(tmp_path, **{key: value})
    assert message in str(err.value) and "\n" not in str(err.value)


# --- preflight ---------------------------------------------------------------------------


def _preflight(tables, stored, partial=None):
    return preflight(tables, stored, head="d4", known=CHAIN, mlflow_version="9.9", partial_check=partial)


def test_preflight_tells_every_state_apart():
    assert _preflight([], None).state == "empty"
    assert _preflight(["alembic_version"], []).state == "empty"
    assert _preflight(["runs", "experiments"], None).state == "unversioned"
    assert _preflight(["runs"], ["a1", "b2"]).state == "branched"
    at_head = _preflight(["runs"], ["d4"], partial=lambda rev: pytest.fail("no partial check at the head"))
    assert at_head.state == "head" and at_head.pending == []
    behind = _preflight(["runs"], ["b2"], partial=lambda rev: [])
    assert behind.state == "behind" and behind.pending == ["c3", "d4"] and behind.upgradable


def test_preflight_names_both_revisions_of_a_newer_store():
    newer = _preflight(["runs"], ["ffff"])
    assert newer.state == "newer"
    assert "ffff" in newer.problems[0] and "d4" in newer.problems[0] and "MLflow 9.9" in newer.problems[0]


def test_preflight_flags_leftover_batch_tables_and_schema_beyond_the_revision():
    leftover = _preflight(["runs", "_alembic_tmp_experiments"], ["b2"], partial=lambda rev: [])
    assert leftover.state == "partial" and "_alembic_tmp_experiments" in leftover.problems[0]
    beyond = _preflight(["runs"], ["b2"], partial=lambda rev: [f"extra column at {rev}"])
    assert beyond.state == "partial" and beyond.problems == ["extra column at b2"]


# --- snapshots and schema diffs ----------------------------------------------------------


def test_norm_gives_one_form_for_both_drivers():
    assert norm(True) == 1 and norm(False) == 0
    assert norm(float("nan")) == "NaN" and norm(float("-inf")) == "-Infinity"
    assert norm(b"\x00\xff") == "0x00ff" == norm(memoryview(b"\x00\xff"))
    assert norm({"b": 1, "a": [2]}) == '{"a": [2], "b": 1}'
    import datetime as dt

    assert norm(dt.date(2026, 1, 2)) == "2026-01-02"


def test_snapshot_compare_names_the_table_and_first_difference(tmp_path):
    path = tmp_path / "s.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE m (k TEXT, step INTEGER, v REAL, PRIMARY KEY (k, step))")
        conn.executemany("INSERT INTO m VALUES (?, ?, ?)", [("b", 1, 1), ("a", 2, 0.5), ("a", 1, 2.0)])
    engine = sa.create_engine(f"sqlite:///{path}")
    before = snapshot(engine)
    assert before["m"].count == 3 and (before["m"].rows or [])[0] == ("a", 1, 2.0)  # key order; REAL 1 read as 1.0
    assert compare(before, snapshot(engine)) == []
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE m SET v = 9 WHERE k = 'a' AND step = 2"))
    assert compare(before, snapshot(engine)) == [
        "m: same count, different content (first difference: ('a', 2, 0.5) became ('a', 2, 9.0))"
    ]
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM m WHERE k = 'b'"))
    assert compare(before, snapshot(engine)) == ["m: 3 rows before, 2 after"]
    engine.dispose()


def test_schema_diff_reports_what_a_fresh_store_has_and_this_one_lacks():
    fresh = {"metrics": {"columns": ["key", "value"], "indexes": ["index_metrics_run_uuid"], "primary_key": ["key"]}}
    upgraded = {"metrics": {"columns": ["key", "value", "extra"], "indexes": [], "primary_key": ["key"]}, "odd": {}}
    assert diff(upgraded, fresh) == [
        "extra column metrics.extra",
        "missing index metrics.index_metrics_run_uuid",
        "extra table odd",
    ]


# --- the SQLite -> PostgreSQL copy -------------------------------------------------------


def test_copy_text_encodes_what_postgresql_copy_reads():
    assert _copy_text(None, "text") == "\\N"
    assert _copy_text(1, "bool") == "t" and _copy_text(0, "bool") == "f"
    assert _copy_text(float("nan"), "float") == "NaN" and _copy_text(float("inf"), "float") == "Infinity"
    assert _copy_text(0.1, "float") == "0.1" and _copy_text(3, "int") == "3"
    assert _copy_text(b"\x01\xab", "bytes") == "\\\\x01ab"
    assert _copy_text("a\tb\nc\\d\re", "text") == "a\\tb\\nc\\\\d\\re"


def test_prescan_lists_every_value_postgresql_would_refuse():
    target = sa.MetaData()
    sa.Table(
        "t",
        target,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(5), nullable=False),
        sa.Column("flag", sa.Boolean),
        sa.Column("step", sa.BigInteger),
    )
    source = sqlite3.connect(":memory:")
    source.execute("CREATE TABLE t (id INTEGER, name VARCHAR(5), flag BOOLEAN, step BIGINT, gone TEXT)")
    source.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?, 'x')",
        [(1, "ok", 1, 1), (3_000_000_000, "toolong", 0, 2), (2, "a\x00b", 1, "seven"), (4, None, 1, 3)],
    )
    source.commit()
    source_meta = sa.MetaData()
    source_meta.reflect(sa.create_engine("sqlite://", creator=lambda: source))
    plan = make_plan(source, source_meta, target)
    assert plan.total_rows == 4 and plan.tables[0].columns == ["id", "name", "flag", "step"]
    assert plan.problems == [
        "t.gone: in the source, not in the target",
        "t.id: 1 value(s) outside the 32-bit INTEGER range (largest: 3000000000)",
        "t.name: 1 value(s) longer than VARCHAR(5) (largest: 7)",
        "t.name: 1 value(s) contain a NUL character (PostgreSQL text cannot)",
        "t.name: 1 value(s) NULL where the target column is NOT NULL",
        "t.step: 1 value(s) stored by SQLite as another type than ('integer','null')",
    ]


def test_artifact_root_rewrite_counts_first_and_refuses_an_overflow(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE experiments (experiment_id INTEGER, artifact_location VARCHAR(256))"))
        conn.execute(sa.text("CREATE TABLE runs (run_uuid VARCHAR(32), artifact_uri VARCHAR(200))"))
        conn.execute(sa.text("INSERT INTO experiments VALUES (1, '/srv/ml_runs%/1'), (2, 's3://other/2')"))
        conn.execute(sa.text("INSERT INTO runs VALUES ('r', '/srv/ml_runs%/1/r/artifacts')"))
    with engine.begin() as conn:
        counts = rewrite_artifact_root(conn, "/srv/ml_runs%", "s3://bucket/mlruns", dry_run=True)
        assert counts == {"experiments.artifact_location": 1, "runs.artifact_uri": 1}
        with pytest.raises(UserError, match=r"runs.artifact_uri up to 2\d\d characters, VARCHAR\(200\)"):
            rewrite_artifact_root(conn, "/srv/ml_runs%", "s3://" + "b" * 190, dry_run=True)
        assert rewrite_artifact_root(conn, "/srv/ml_runs%", "s3://bucket/mlruns", dry_run=False) == counts
        locations = sorted(r[0] for r in conn.execute(sa.text("SELECT artifact_location FROM experiments")))
    assert locations == ["s3://bucket/mlruns/1", "s3://other/2"]
    engine.dispose()
    assert parse_rewrite("a=b") == ("a", "b") and parse_rewrite(None) is None
    for bad in ("a", "=b", "a=a"):
        with pytest.raises(UserError, match="--rewrite-artifact-root"):
            parse_rewrite(bad)


# --- restores ----------------------------------------------------------------------------


def test_a_fresh_store_holds_no_data_and_a_used_one_does():
    assert holds_data({"alembic_version": 1, "workspaces": 1, "experiments": 1, "runs": 0}) == {}
    assert holds_data({"experiments": 2, "runs": 5, "metrics": 0}) == {"experiments": 2, "runs": 5}


def test_artifact_merge_adds_missing_files_only_and_never_escapes(tmp_path):
    archive = tmp_path / "artifacts.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (("1/r/artifacts/a.txt", b"aaa"), ("../escape.txt", b"x"), ("1/r/artifacts/b.txt", b"bb")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("1/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    root = tmp_path / "artifacts"
    (root / "1" / "r" / "artifacts").mkdir(parents=True)
    (root / "1" / "r" / "artifacts" / "b.txt").write_bytes(b"someone else's")
    assert merge_artifacts(archive, root) == {"added": 1, "present": 0, "skipped": 3}
    assert (root / "1" / "r" / "artifacts" / "a.txt").read_bytes() == b"aaa"
    assert (root / "1" / "r" / "artifacts" / "b.txt").read_bytes() == b"someone else's"
    assert not (tmp_path / "escape.txt").exists() and not (root / "1" / "link").exists()
    assert merge_artifacts(archive, root)["present"] == 1


# --- the gc plan -------------------------------------------------------------------------


def test_gc_plan_matches_what_mlflow_gc_selects(tmp_path):
    from mlflow.entities import ViewType
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = SqlAlchemyStore(uri, "mlflow-artifacts:/")
    exp = store.create_experiment("e")
    runs = [store.create_run(exp, "u", 1, [], f"r{i}").info.run_id for i in range(3)]
    gone = store.create_experiment("gone")
    in_gone = store.create_run(gone, "u", 1, [], "in-gone").info.run_id
    model = store.create_logged_model(exp, "lm").model_id
    for run in runs[:2]:
        store.delete_run(run)
    store.delete_experiment(gone)
    store.delete_logged_model(model)
    old = int(time.time() * 1000) - 10 * 86_400_000
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET deleted_time = :t WHERE run_uuid = :r"), {"t": old, "r": runs[0]})
        conn.execute(
            sa.text("UPDATE experiments SET last_update_time = :t WHERE experiment_id = :e"), {"t": old, "e": int(gone)}
        )
        conn.execute(sa.text("UPDATE logged_models SET last_updated_timestamp_ms = :t"), {"t": old})
    week = 7 * 86_400_000
    mlflow_picks = {("run", r) for r in store._get_deleted_runs(older_than=week)} | {
        ("logged model", m) for m in store._get_deleted_logged_models(older_than=week)
    }
    threshold = int(time.time() * 1000) - week
    mlflow_picks |= {
        ("experiment", e.experiment_id)
        for e in store.search_experiments(
            view_type=ViewType.DELETED_ONLY, filter_string=f"last_update_time < {threshold}"
        )
    }
    mlflow_picks |= {("run", in_gone)}  # the deleted runs of a purged experiment
    store.engine.dispose()
    with open_store(uri) as reader:
        planned = gc.plan(reader, 7 * 86400, tmp_path / "artifacts")
    assert {(i.kind, i.id) for i in planned} == mlflow_picks
    assert ("run", runs[1]) not in mlflow_picks  # deleted just now: kept


def test_the_partly_migrated_reference_is_built_once_per_release_and_revision(tmp_path):
    from tasks.libs.lifecycle.internals.schema_compare import reference_names
    from tests.support.lifecycle import OLD_REVISION

    names = reference_names(OLD_REVISION, tmp_path)
    [cache] = list(tmp_path.glob(f"reference-*-{OLD_REVISION}.json"))
    assert "experiments" in names and "workspace" not in names["experiments"]["columns"]
    cache.write_text(json.dumps({"cached": {"columns": [], "indexes": []}}))
    assert reference_names(OLD_REVISION, tmp_path) == {"cached": {"columns": [], "indexes": []}}
    cache.write_text("{damaged")
    assert reference_names(OLD_REVISION, tmp_path) == names  # rebuilt


def test_our_own_indexes_are_not_schema_drift():
    """An index named mlflow_ops_* (one the bench's levers may adopt) is ours, not MLflow's schema."""
    import sqlalchemy as sa

    from tasks.libs.lifecycle.internals.schema_compare import diff, fingerprint

    plain, ours = sa.create_engine("sqlite://"), sa.create_engine("sqlite://")
    for engine in (plain, ours):
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE params (key TEXT, value TEXT, run_uuid TEXT)")
            conn.exec_driver_sql("CREATE INDEX index_params_run_uuid ON params (run_uuid)")
    with ours.begin() as conn:
        conn.exec_driver_sql("CREATE INDEX mlflow_ops_params_key_value ON params (key, value, run_uuid)")
    assert diff(fingerprint(ours), fingerprint(plain)) == []
    with ours.begin() as conn:
        conn.exec_driver_sql("CREATE INDEX someone_elses ON params (value)")
    assert diff(fingerprint(ours), fingerprint(plain)) != []
