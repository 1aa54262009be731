"""``tinyrobust sweep``: a grid or random search over config keys, each trial a normal run, on Ray."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> str:
    p = sub.add_parser(
        "sweep",
        help="grid/random search over config keys on Ray, scored on validation images",
        description="Runs every trial of a sweep file (configs/sweeps/) as a normal run directory "
        "under --out, scores it on the validation split (clean, worst-case robust, "
        "Jacobian norm, weight KB, seconds) and rewrites results.csv/.md after each "
        "trial. Rerun the same command to continue a killed sweep.",
    )
    p.add_argument("--config", required=True, help="sweep file (YAML), e.g. configs/sweeps/jr_lambda_cifar10.yaml")
    p.add_argument(
        "--address",
        help="an existing Ray cluster (host:port, ray://host:port or auto); "
        "default: a local Ray with the sweep file's resources",
    )
    p.add_argument("--out", help="output folder (default sweeps/<sweep name>)")
    p.add_argument("--data-dir", help="where datasets live (default $TINYROBUST_DATA)")
    p.add_argument("--local", action="store_true", help="without Ray: run the trials one at a time in this process")
    p.add_argument("--dry-run", action="store_true", help="validate the sweep file and list its trials; train nothing")
    p.add_argument(
        "--tables-only",
        action="store_true",
        help="rewrite results.csv/.md/.json from the trials scored so far (e.g. while another machine runs "
        "the sweep); train and score nothing",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return "sweep"


def run(args: argparse.Namespace) -> int:
    from .engine import LocalExecutor, SweepError, check_trials, finished_results, import_ray, run_sweep, write_tables
    from .spec import load_sweep

    if args.local and args.address:
        raise SweepError("--local and --address exclude each other")
    try:  # a path, or a shipped sweep by name (sweeps/jr_lambda_cifar10), as `train --config` takes
        from ..resources import resolve_config

        config = resolve_config(args.config)
    except ImportError:
        config = args.config
    spec = load_sweep(config)
    out = Path(args.out or f"sweeps/{spec.name}")
    if args.dry_run:
        check_trials(spec, args.data_dir)
        for t in spec.trials:
            print(f"{t.name}  " + ", ".join(f"{k}={v}" for k, v in t.values.items()))
        print(f"{len(spec.trials)} trials; out: {out}")
        return 0
    if args.tables_only:
        if not (out / "runs").is_dir():
            raise SweepError(f"{out} holds no trials of sweep {spec.name} (no {out / 'runs'} folder)")
        results = finished_results(spec, out)
        write_tables(spec, out, results)
        print(f"sweep {spec.name}: {len(results)} of {len(spec.trials)} trials scored; table: {out / 'results.md'}")
        return 0
    if not args.local:
        import_ray()  # the install hint before any work
    res = run_sweep(
        spec,
        out,
        executor=LocalExecutor() if args.local else None,
        address=args.address,
        data_dir=args.data_dir,
        progress=not args.quiet,
    )
    print(
        f"sweep {spec.name}: {res['done']} trials done ({res['skipped']} already before), {res['failed']} failed; "
        f"table: {out / 'results.md'}"
    )
    return 1 if res["failed"] else 0
