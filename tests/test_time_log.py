"""benchmarks/time_log.py: a /usr/bin/time -v report read into the committed timing record."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOG = """[reproduce 10:28:33] 2 worker processes
\tCommand being timed: "tinyrobust reproduce --grid g --jobs 2"
\tUser time (seconds): 9148.48
\tSystem time (seconds): 36.58
\tPercent of CPU this job got: 197%
\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:17:20
\tMaximum resident set size (kbytes): 4527640
\tExit status: 0
"""


def _module():
    spec = importlib.util.spec_from_file_location("time_log", REPO / "benchmarks" / "time_log.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parse_reads_wall_cpu_and_memory():
    tl = _module()
    res = tl.parse(LOG)
    assert res["wall_s"] == 4640.0 and res["cpu_percent"] == 197 and res["max_rss_gb"] == 4.32
    assert res["command"] == "tinyrobust reproduce --grid g --jobs 2" and res["exit_status"] == 0
    assert tl.wall_seconds("4:05.5") == 245.5


def test_a_log_without_time_output_fails_in_one_line():
    with pytest.raises(SystemExit, match="no 'command' line in the log"):
        _module().parse("just a program's output\n")
