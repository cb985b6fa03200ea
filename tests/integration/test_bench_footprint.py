"""The bench's memory readings against a process tree of known size."""

from __future__ import annotations

import sys

from tasks.libs.bench.footprint import tree_memory
from tasks.libs.core.managed import Launch, ManagedProcess
from tasks.libs.core.processes import ProcessRecord

# A leader and the child it starts, each touching 100 MiB of its own memory, then waiting.
TREE = """\
import subprocess, sys, time
block = bytearray(100 * 2**20)
for i in range(0, len(block), 4096):
    block[i] = 1
if len(sys.argv) == 1:
    subprocess.Popen([sys.executable, sys.argv[0], "child"])
open(sys.argv[0] + (".child" if len(sys.argv) > 1 else ".leader"), "w").close()
time.sleep(600)
"""


def test_tree_memory_sums_every_process_of_the_group(tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    tree = ManagedProcess(
        "the tree", pid_file=tmp_path / "tree.pid", log_file=tmp_path / "tree.log", record=ProcessRecord
    )
    markers = (tmp_path / "tree.py.child", tmp_path / "tree.py.leader")
    record = tree.start(
        Launch(
            command=[sys.executable, str(script)],
            env={},
            cwd=tmp_path,
            ready=lambda: None if all(p.exists() for p in markers) else "not every process has touched its memory",
            timeout=60,
        )
    )
    try:
        rss, pss = tree_memory(record.pgid)
        assert 200 * 2**20 <= pss <= rss < 400 * 2**20
    finally:
        tree.stop()
    assert tree_memory(record.pgid) == (0, 0)
