"""Rewrite committed result files so they hold no absolute machine paths.

Result files written before paths.portable_text existed name the data directory (``env.json``'s
``data_source``, reports' "read from ..."), the repository or the cache with absolute paths. This
rewrites, in every .json/.jsonl/.md/.yaml/.html file under ``--results``, the same prefixes the
package now writes portably: data dir -> ``$TINYROBUST_DATA``, repository -> relative, cache ->
``$TINYROBUST_CACHE``, home -> ``~``. Only text is replaced (a path is one JSON string, so the files
stay valid); files are written atomically and only when they change.

    .venv/bin/python benchmarks/scrub_paths.py --dry-run      # list what would change
    .venv/bin/python benchmarks/scrub_paths.py                # rewrite
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tinyrobust.io_utils import atomic_write_text
from tinyrobust.paths import portable_text

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = (".json", ".jsonl", ".md", ".yaml", ".html")


def scrub(text: str, data_dirs: list[str], repo: str) -> str:
    for d in data_dirs or [None]:
        text = portable_text(text, d, root=repo)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"), help="folder to scrub")
    ap.add_argument(
        "--data-dir",
        action="append",
        default=[],
        help="an absolute data directory the results name (repeatable; default: $TINYROBUST_DATA)",
    )
    ap.add_argument("--repo", default=str(REPO), help="repository root; paths under it become relative")
    ap.add_argument("--dry-run", action="store_true", help="only list the files that would change")
    a = ap.parse_args(argv)
    data_dirs = a.data_dir or ([os.environ["TINYROBUST_DATA"]] if os.environ.get("TINYROBUST_DATA") else [])
    root = Path(a.results)
    changed = 0
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix not in SUFFIXES:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = scrub(text, data_dirs, a.repo)
        if new != text:
            changed += 1
            n = sum(1 for x, y in zip(text.splitlines(), new.splitlines()) if x != y)
            print(f"{'would rewrite' if a.dry_run else 'rewrote'} {p.relative_to(root)} ({n} lines)")
            if not a.dry_run:
                atomic_write_text(p, new)
    print(f"{changed} file(s) {'would change' if a.dry_run else 'changed'} under {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
