"""``tinyrobust reproduce``: the paper's comparison in one command."""

from __future__ import annotations

import argparse

DATASETS = ("cifar10", "svhn", "speech_commands", "speech_commands_logmel")


def add_parser(sub) -> str:
    p = sub.add_parser(
        "reproduce",
        help="train, attack and report the paper's comparison for a dataset",
        description="Trains what is missing (reusing finished runs), attacks every model with the "
        "same settings, and writes report.md and report.html.",
    )
    p.add_argument(
        "--dataset",
        help=f"the dataset whose grid to run ({', '.join(DATASETS)}); its grid is configs/reproduce/<dataset>.yaml",
    )
    p.add_argument(
        "--grid",
        help="a grid by name instead (configs/reproduce/<grid>.yaml, e.g. cifar10_adversarial); the grid "
        "names its dataset",
    )
    p.add_argument("--budget", default="quick", help="a budget of the grid file (quick or full; default quick)")
    p.add_argument("--out", help="output folder (default results/<dataset>-<budget>)")
    p.add_argument("--data-dir", help="where datasets live (default $TINYROBUST_DATA)")
    p.add_argument(
        "--stages",
        default="train,attack,report",
        help="comma list of stages to run: train, attack, report (default all)",
    )
    p.add_argument("--grid-dir", help="folder of grid files (default configs/reproduce)")
    p.add_argument(
        "--models",
        help="comma list of grid model keys to train/attack, in this order (default: all, "
        "in grid order); e.g. two processes on two cores, each with its share",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the attack subset and attacks")
    p.add_argument(
        "--pareto-runs",
        help="comma list of extra run folders or glob patterns (e.g. 'sweeps/lam/*': sweep trials) drawn on "
        "the report's robustness-vs-memory plots beside the grid's models and its pareto_runs",
    )
    p.add_argument(
        "--runs-dir",
        help="where the grid's trained runs live (default: the grid's runs_dir, <out>/runs for most grids); "
        "e.g. the waveform-domain grid speech_commands_wav reads the log-mel grid's runs",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train and attack in this many worker processes of one thread each, sharing the models "
        "(default 1; 2 on a 2-core machine); the report is written once they are done",
    )
    p.add_argument(
        "--address",
        help="run the --jobs workers as Ray tasks of one CPU each on this Ray cluster (host:port, ray://host:port "
        "or auto; 'local' starts a Ray here) instead of as local processes; every node must see the output, "
        "runs and data folders at the same paths (needs the sweep extra: pip install 'tinyrobust[sweep]')",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return "reproduce"


def run(args: argparse.Namespace) -> int:
    import os

    from ..errors import TinyRobustError
    from .pipeline import reproduce

    if bool(args.dataset) == bool(args.grid):
        raise TinyRobustError("give --dataset (its own grid) or --grid NAME, one of the two")
    name = args.grid or args.dataset
    out = args.out or f"results/{name}-{args.budget}"
    path = reproduce(
        name,
        args.budget,
        out,
        data_dir=args.data_dir,
        stages=[s.strip() for s in args.stages.split(",") if s.strip()],
        seed=args.seed,
        progress=not args.quiet,
        configs_dir=args.grid_dir,
        models=[m.strip() for m in args.models.split(",") if m.strip()] if args.models else None,
        # taken from the working directory here (the grid's pareto_runs: from the output folder)
        extra_runs=[os.path.abspath(r.strip()) for r in (args.pareto_runs or "").split(",") if r.strip()],
        runs_dir=args.runs_dir,
        jobs=args.jobs,
        address=args.address,
    )
    print(f"report: {path}" if path.name == "report.md" else f"results in {path}")
    return 0
