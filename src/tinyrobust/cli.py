"""Command-line entry point: a thin layer that parses arguments and calls the library.

Errors a user can cause are TinyRobustError: printed as one line, exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List

from .errors import TinyRobustError

Command = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too: ``tinyrobust <cmd>: error: ...``, exit code 2.
    Subcommand parsers (also those added by _command_modules) inherit it."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .resources import resolve_config
    from .rundir import CONFIG_FILE
    from .train import train_run

    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.config is None and not (args.resume and run_dir and (run_dir / CONFIG_FILE).is_file()):
        raise TinyRobustError(f"--config is required (or --resume with a --run-dir that holds {CONFIG_FILE})")
    cfg_path = resolve_config(args.config) if args.config else run_dir / CONFIG_FILE
    cfg = load_config(cfg_path, args.set)
    run_dir = run_dir or Path("runs") / cfg.name
    summary = train_run(cfg, run_dir, resume=args.resume, data_dir=args.data_dir, progress=not args.quiet)
    print(
        f"{cfg.name}: test accuracy {100 * summary['test_accuracy']:.2f}%, "
        f"{summary['weight_kb']:.1f} KB of weights; run in {run_dir}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import eval_run, format_eval

    r = eval_run(args.run, data_dir=args.data_dir)
    print(json.dumps({k: v for k, v in r.items() if k != "layers"}, indent=2) if args.json else format_eval(r))
    return 0


def _rekeep(args: argparse.Namespace) -> int:
    from .train.keep import rekeep_run

    for run in args.run:
        r = rekeep_run(run, args.keep, data_dir=args.data_dir)
        w, before = r["weights"], r["previous"]
        redo = [k for k, v in r["check_reproduced"].items() if v["recorded"] is not None and v["now"] != v["recorded"]]
        print(
            f"{run}: rule {w['rule']}: epoch {w['epoch']} kept (was {before.get('epoch')}): {w['reason']}; "
            f"test acc {r['test_accuracy']:.4f}"
            + (f", val acc {r['val_accuracy']:.4f}" if r["val_accuracy"] is not None else "")
            + (f"; removed stale {', '.join(r['removed_stale'])}" if r["removed_stale"] else "")
            + (f"; note: epoch {redo} check did not reproduce its recorded value" if redo else "")
        )
    return 0


def _models(args: argparse.Namespace) -> int:
    from .config import ACT_QUANTS, WEIGHT_QUANTS
    from .data import DATASETS
    from .models import MODELS
    from .resources import shipped_configs

    print("models:             " + ", ".join(MODELS.names()))
    print("datasets:           " + ", ".join(DATASETS.names()))
    print("weight quantizers:  " + ", ".join(WEIGHT_QUANTS))
    print("act quantizers:     " + ", ".join(ACT_QUANTS))
    names = [n[: -len(".yaml")] for n in shipped_configs()]
    print("shipped configs:    " + ", ".join(n for n in names if "/" not in n) + "  (train --config NAME)")
    print("reproduce grids:    " + ", ".join(n[len("reproduce/") :] for n in names if n.startswith("reproduce/")))
    sweeps = [n for n in names if n.startswith("sweeps/")]
    if sweeps:
        print("sweep files:        " + ", ".join(sweeps) + "  (sweep --config configs/NAME.yaml)")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, Dict[str, Command]]:
    p = _Parser(prog="tinyrobust", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    handlers: Dict[str, Command] = {}

    t = sub.add_parser("train", help="train a model from a config (QAT + Jacobian regularization)")
    t.add_argument("--config", help="YAML config: a file, or a shipped one by name (see `tinyrobust list`)")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=5 (repeatable)",
    )
    t.add_argument("--run-dir", help="output folder (default runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    t.add_argument("--data-dir", help="where datasets live (default $TINYROBUST_DATA)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    handlers["train"] = _train

    e = sub.add_parser("eval", help="clean accuracy, parameters and weight memory of a run")
    e.add_argument("--run", required=True, help="run directory")
    e.add_argument("--data-dir")
    e.add_argument("--json", action="store_true")
    handlers["eval"] = _eval

    k = sub.add_parser(
        "rekeep",
        help="re-choose the kept epoch of finished adversarial runs (train.adversarial.keep) from their weight files",
    )
    k.add_argument("--run", required=True, nargs="+", help="run directories")
    k.add_argument("--keep", help="best_if_significant, best_robust or last (default: the run's config)")
    k.add_argument("--data-dir")
    handlers["rekeep"] = _rekeep

    sub.add_parser("list", help="list registered models, datasets and quantizers")
    handlers["list"] = _models

    for module in _command_modules():
        if hasattr(module, "add_parsers"):  # a module that adds several commands
            module.add_parsers(sub)
            handlers.update(module.COMMANDS)
        else:
            handlers[module.add_parser(sub)] = module.run
    return p, handlers


def _command_modules() -> List:
    """Commands that live beside their package (attack, export, reproduce, ...)."""
    import importlib

    mods = []
    for path in (
        "tinyrobust.attacks.cli_command",
        "tinyrobust.export.cli_command",
        "tinyrobust.reproduce.cli_command",
        "tinyrobust.sweep.cli_command",
    ):
        try:
            mods.append(importlib.import_module(path))
        except ModuleNotFoundError as exc:
            if exc.name != path:
                raise
    return mods


def main(argv: List[str] | None = None) -> int:
    parser, handlers = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the subcommand in the error, as for its other usage errors
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return handlers[args.command](args)
    except TinyRobustError as exc:
        print(f"tinyrobust {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tinyrobust {args.command}: interrupted; finished work is kept (resume to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
