"""``tinyrobust attack``: argparse wiring only; the work is in :mod:`.evaluate` (imported lazily
so ``tinyrobust --help`` does not pay for torch and ART)."""

from __future__ import annotations

import argparse

from ..errors import AttackError
from ..rundir import ROBUSTNESS_FILE, ROBUSTNESS_ONNX_FILE

DEFAULT_ATTACKS = "pgd,autoattack,square"


def add_parser(subparsers) -> str:
    p = subparsers.add_parser(
        "attack",
        help="measure adversarial robustness of a trained run",
        description="Attack a trained run on a seeded, stratified test subset at several L-inf budgets, check "
        "for gradient masking, print a table and write robustness.json.",
    )
    p.add_argument("--run", dest="run_dir", metavar="DIR", help="run directory to attack")
    p.add_argument(
        "--attacks",
        default=DEFAULT_ATTACKS,
        help=f"comma list of attacks and/or families white|black|all (default: {DEFAULT_ATTACKS}, "
        "an AutoAttack-style white+black ensemble)",
    )
    p.add_argument("--eps", default="1,2,4,8", help="L-inf budgets in pixel units /255 (default: 1,2,4,8)")
    p.add_argument("--n", type=int, default=1000, help="test images, stratified by class (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of the attacks (default: 0)")
    p.add_argument("--data-dir", metavar="D", help="dataset folder (default: $TINYROBUST_DATA or the cache)")
    p.add_argument("--out", metavar="DIR", help="where to write robustness.json (default: the run directory)")
    p.add_argument(
        "--surrogate",
        action="append",
        default=[],
        metavar="[KEY=]RUN",
        help="separately trained run to craft transfer attacks on; repeat as KEY=RUN for several "
        "(one transfer@KEY entry each, e.g. --surrogate qnn_float=runs/qnn_float)",
    )
    p.add_argument(
        "--cascade",
        action="store_true",
        help="run each attack only on the images every earlier one left correct (AutoAttack's rule; "
        "what reproduce does): the per-image worst case at the least cost",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="ATTACK.KEY=VALUE",
        help="override an attack default, e.g. --set pgd.steps=50 --set masking.large_eps=128",
    )
    p.add_argument(
        "--eot",
        type=int,
        metavar="K",
        help="EOT samples per gradient for stochastic models (default: 8 if the model is stochastic)",
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default: 128)")
    p.add_argument(
        "--onnx",
        metavar="FILE",
        help="attack this exported ONNX/QONNX file of the run instead of the PyTorch model (black-box attacks only)",
    )
    p.add_argument(
        "--target",
        choices=["frozen", "brevitas"],
        default="frozen",
        help="model the attacks query: frozen (default; the same logits as the trained Brevitas model, "
        "weights quantized once, faster) or brevitas (the reference path)",
    )
    p.add_argument("--list", action="store_true", help="list attacks, threat models and defaults, then exit")
    return "attack"


def parse_eps(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AttackError(
            f"--eps must be comma-separated numbers in pixel units /255, e.g. 1,2,4,8; got {text!r}"
        ) from None


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``["pgd.steps=50"]`` -> ``{"pgd": {"steps": 50}}``: the same YAML-valued ``--set`` dialect as training."""
    from ..config import parse_set_items

    return parse_set_items(items, depth=2, form="ATTACK.KEY=VALUE", example="pgd.steps=50", error=AttackError)


def parse_surrogates(items: list[str]) -> tuple[str | None, dict[str, str]]:
    """``["RUN"]`` -> (RUN, {}); ``["a=RUN1", "b=RUN2"]`` -> (None, {a: RUN1, b: RUN2})."""
    if not items:
        return None, {}
    if len(items) == 1 and "=" not in items[0]:
        return items[0], {}
    named = {}
    for item in items:
        key, sep, run = item.partition("=")
        if not (sep and key.strip() and run.strip()):
            raise AttackError(
                f"--surrogate: give KEY=RUN when there are several, e.g. qnn_float=runs/qnn_float; got {item!r}"
            )
        if key.strip() in named:
            raise AttackError(f"--surrogate: key {key.strip()!r} given twice")
        named[key.strip()] = run.strip()
    return None, named


def run(args: argparse.Namespace) -> int:
    from .evaluate import attack_run, format_table, list_attacks

    if args.list:
        print(list_attacks())
        return 0
    if not args.run_dir:
        raise AttackError("tinyrobust attack needs --run DIR (or --list to see the attacks)")
    if args.eot is not None and args.eot < 1:
        raise AttackError(f"--eot must be >= 1; got {args.eot}")
    surrogate_run, surrogate_runs = parse_surrogates(args.surrogate)
    results = attack_run(
        args.run_dir,
        args.attacks,
        parse_eps(args.eps),
        n=args.n,
        seed=args.seed,
        data_dir=args.data_dir,
        out=args.out,
        surrogate_run=surrogate_run,
        surrogate_runs=surrogate_runs,
        cascade=args.cascade,
        params=parse_overrides(args.overrides),
        eot_samples=args.eot,
        batch_size=args.batch_size,
        onnx_path=args.onnx,
        out_name=ROBUSTNESS_ONNX_FILE if args.onnx else ROBUSTNESS_FILE,
        target=args.target,
    )
    print(format_table(results))
    print(f"wrote {results['meta']['output']}")
    return 0
