"""What every benchmark records beside its numbers: the command as a user would type it and the machine."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, Dict


def recorded_command(script: str) -> str:
    """``python benchmarks/<script> <args>`` with ``--work DIR`` left out (a scratch folder of this machine)."""
    args = sys.argv[1:]
    kept = [x for k, x in enumerate(args) if x != "--work" and (k == 0 or args[k - 1] != "--work")]
    return (f"python benchmarks/{script} " + " ".join(kept)).strip()


def machine(threads: int) -> Dict[str, Any]:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": threads}
