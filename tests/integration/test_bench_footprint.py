"""The bench's memory readings against a process tree of known size."""

from __future__ import annotations

import sys

from tasks.libs.bench.footprint import tree_memory
from tasks.libs.core.processes import start_group, stop_group
from tasks.libs.core.waits import wait_until

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
    proc = start_group([sys.executable, str(script)], env={}, log_path=tmp_path / "tree.log")
    try:
        ready = (tmp_path / "tree.py.child", tmp_path / "tree.py.leader")
        assert wait_until(lambda: all(p.exists() for p in ready), timeout=60)
        rss, pss = tree_memory(proc.pid)
        assert 200 * 2**20 <= pss <= rss < 400 * 2**20
    finally:
        stop_group(proc.pid, grace=5)
        proc.wait(timeout=30)
    assert tree_memory(proc.pid) == (0, 0)
