"""``tinyrobust export`` and ``tinyrobust footprint``.

This module adds two commands. ``add_parsers(subparsers)`` adds both and ``COMMANDS`` maps each
name to its handler; ``add_parser``/``run`` are the one-command protocol of ``cli.py`` (they
register ``export`` only, and ``run`` dispatches on ``args.command`` so it serves both)."""

from __future__ import annotations

import argparse
import json

from ..errors import TinyRobustError


def _add_export(sub) -> None:
    from .onnx_export import FORMATS, MIN_AGREEMENT

    p = sub.add_parser(
        "export",
        help="export a run to ONNX (QCDQ) or QONNX and verify the file against PyTorch",
        description="Export through Brevitas (onnx: QCDQ for standard runtimes; qonnx: for FINN/hls4ml), "
        "then run the file on a seeded stratified test subset and compare with PyTorch. "
        f"Fails (writing nothing) if top-1 agreement is below {100 * MIN_AGREEMENT:.1f}%.",
    )
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (QCDQ, default) or qonnx")
    p.add_argument("--out", help="output file (default <run>/model.onnx or <run>/model.qonnx.onnx)")
    p.add_argument("--n", type=int, default=1000, help="test images to verify on (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified subset (default 0)")
    p.add_argument("--data-dir", help="where datasets live (default $TINYROBUST_DATA)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--json", action="store_true", help="print the verification record as JSON")


def _add_footprint(sub) -> None:
    p = sub.add_parser(
        "footprint",
        help="per-layer weight and activation memory of a run, beside the MLCommons references",
        description="Weight memory at each layer's bit width, activation memory at the chosen activation "
        "bits, peak activation (largest layer output) and a double-buffer estimate, in KB "
        "(1024 bytes), beside mlc_resnet8 / mlc_dscnn in float and int8.",
    )
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--no-references", action="store_true", help="omit the reference models")


def run_export(args: argparse.Namespace) -> int:
    from .onnx_export import export_run, format_export

    r = export_run(
        args.run, args.format, args.out, n=args.n, data_dir=args.data_dir, seed=args.seed, threads=args.threads
    )
    print(json.dumps(r, indent=2) if args.json else format_export(r))
    return 0


def run_footprint(args: argparse.Namespace) -> int:
    from .footprint import footprint_run, format_footprint

    fp = footprint_run(args.run, references=not args.no_references)
    if args.json:
        print(json.dumps(fp, indent=2))
    else:
        print(format_footprint(fp, fp.get("references")))
    return 0


COMMANDS = {"export": run_export, "footprint": run_footprint}


def add_parsers(sub) -> list[str]:
    """Add every command of this module; returns their names (keys of ``COMMANDS``)."""
    _add_export(sub)
    _add_footprint(sub)
    return list(COMMANDS)


def add_parser(sub) -> str:
    """One-command protocol of cli.py: adds ``export`` only (use add_parsers/COMMANDS for both)."""
    _add_export(sub)
    return "export"


def run(args: argparse.Namespace) -> int:
    try:
        handler = COMMANDS[args.command]
    except KeyError:
        raise TinyRobustError(f"unknown command {args.command!r}") from None
    return handler(args)
