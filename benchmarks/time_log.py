"""A timed end-to-end run as a committed result: reads the report ``/usr/bin/time -v`` printed for a command
(wall time, CPU, peak resident memory) and writes it as JSON + a short Markdown table with the command and
the machine. Measures nothing itself: run the command as ``/usr/bin/time -v <command> 2> LOG`` first.

Usage: python benchmarks/time_log.py --log LOG --out benchmarks/results/<dir>/timing [--note "..."]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from pathlib import Path

FIELDS = {
    "command": r"Command being timed: \"(.*)\"",
    "user_s": r"User time \(seconds\): ([\d.]+)",
    "system_s": r"System time \(seconds\): ([\d.]+)",
    "cpu_percent": r"Percent of CPU this job got: (\d+)%",
    "wall": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)",
    "max_rss_kb": r"Maximum resident set size \(kbytes\): (\d+)",
    "exit_status": r"Exit status: (\d+)",
}


def wall_seconds(text: str) -> float:
    """``1:17:20`` or ``4:05.31`` -> seconds."""
    secs = 0.0
    for part in text.split(":"):
        secs = secs * 60 + float(part)
    return secs


def parse(log: str) -> dict:
    found = {}
    for key, pattern in FIELDS.items():
        m = re.search(pattern, log)
        if m is None:
            raise SystemExit(f"time_log: no '{key}' line in the log: was the command run under /usr/bin/time -v?")
        found[key] = m.group(1)
    return {
        "command": found["command"],
        "wall_s": wall_seconds(found["wall"]),
        "user_s": float(found["user_s"]),
        "system_s": float(found["system_s"]),
        "cpu_percent": int(found["cpu_percent"]),
        "max_rss_gb": round(int(found["max_rss_kb"]) / 1024**2, 2),
        "exit_status": int(found["exit_status"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", required=True)
    ap.add_argument("--out", required=True, help="path without extension; .json and .md are written")
    ap.add_argument("--note", default="", help="one line on the conditions (idle machine, date)")
    a = ap.parse_args()
    res = parse(Path(a.log).read_text())
    res["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
    res["note"] = a.note
    out = Path(a.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    h = res["wall_s"] / 3600
    md = [
        f"# Timed run ({out.parent.as_posix()})",
        "",
        f"Command: `{res['command']}` under `/usr/bin/time -v`; {res['machine']['platform']}, "
        f"{res['machine']['cpus']} CPUs. {a.note}".rstrip(),
        "",
        "| wall | CPU | user + system s | peak RSS GB | exit |",
        "|---|---|---|---|---|",
        f"| {res['wall_s']:.0f} s ({h:.2f} h) | {res['cpu_percent']}% | {res['user_s'] + res['system_s']:.0f} | "
        f"{res['max_rss_gb']} | {res['exit_status']} |",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(md))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
