"""benchmarks.common.PeakRSS: the peak it reports covers the process tree it is given, and with
include_root=False only the descendants (a server's workers without the command that started them)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from benchmarks.common import PeakRSS

HOLD_MB = 200
CHILD = f"x = bytearray({HOLD_MB} * 2**20); import time; time.sleep(60)"


def test_peak_rss_sees_a_child_holding_memory_and_leaves_out_the_root_when_asked():
    child = subprocess.Popen([sys.executable, "-c", CHILD])
    try:
        with PeakRSS(interval_s=0.01) as tree:
            time.sleep(1.5)  # the child allocates and holds
            workers = PeakRSS(interval_s=0.01, include_root=False).start()
            time.sleep(0.2)
            workers.stop()
        own_mb = tree.root.memory_info().rss / 2**20
        child_mb = psutil.Process(child.pid).memory_info().rss / 2**20
        assert child_mb >= HOLD_MB
        assert tree.peak_mb >= own_mb + 0.95 * child_mb, (tree.peak_mb, own_mb, child_mb)
        assert abs(workers.peak_mb - child_mb) < 0.05 * child_mb, (workers.peak_mb, child_mb)
    finally:
        child.kill()
        child.wait()
