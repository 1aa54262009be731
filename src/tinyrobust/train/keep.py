"""Which epoch's weights an adversarial run keeps (``train.adversarial.keep``): the one owner of the rule.

The per-epoch PGD check (train/loop.py) scores every epoch on the same few hundred validation images.
Taking the epoch with the highest check (``best_robust``, Rice et al. 2020's early stopping) follows
the check's noise when the epochs are close: in a 5-epoch screening run it kept epoch 2 (PGD-10 27.6%)
over epoch 5 (25.2%; paired +2.4 [-0.7, +5.5] on 500 images) at 7 points less clean accuracy, so methods
were compared at different points of their schedules. ``best_if_significant`` (the default) keeps the
last epoch unless the best one beats it on the same images with a paired 95% interval above 0 (the
report's Newcombe interval, stats.py), or the catastrophic-overfitting guard stopped the run (the last
epoch is then the collapsed one). docs/training.md has what the rule cost in that run.

``rekeep_run`` applies a rule to a finished run after the fact, from its best-check and last-epoch
weight files, re-running the two epochs' checks with the generators they used in training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from ..config import KEEP_RULES
from ..errors import ConfigError, TinyRobustError
from ..stats import paired_difference


def choose_kept(rule: str, guard: Dict[str, Any], last_epoch: int) -> Dict[str, Any]:
    """``{kept: "best_robust"|"last", epoch, rule, reason[, best_minus_last]}`` for a run's guard state
    (``best_epoch``, ``stopped_at``, and the check outcomes ``best_flags`` / ``last_flags``)."""
    if rule not in KEEP_RULES:
        raise ConfigError(f"train.adversarial.keep: {rule!r} is not allowed; choose one of: {', '.join(KEEP_RULES)}")
    best = guard.get("best_epoch")

    def keep(which: str, reason: str, **extra) -> Dict[str, Any]:
        epoch = best if which == "best_robust" else last_epoch
        return {"kept": which, "epoch": epoch, "rule": rule, "reason": reason, **extra}

    if best is None:
        return keep("last", "no per-epoch check ran")
    if rule == "last":
        return keep("last", "rule: last epoch")
    if rule == "best_robust":
        return keep("best_robust", "rule: the epoch with the best check")
    if guard.get("stopped_at") is not None:
        return keep("best_robust", "early stop: the check collapsed after its best epoch")
    if best == last_epoch:
        return keep("last", "the last epoch has the best check")
    a, b = guard.get("best_flags"), guard.get("last_flags")
    if not a or not b or len(a) != len(b):
        # a checkpoint written before per-image outcomes were kept: say so and fall back to the best check
        return keep("best_robust", "per-image check outcomes not recorded (older run): the best check kept")
    diff = paired_difference([c == "1" for c in a], [c == "1" for c in b])
    if diff["ci95"][0] > 0:
        return keep(
            "best_robust", "the best check beats the last epoch's (paired 95% interval above 0)", best_minus_last=diff
        )
    return keep(
        "last",
        "the best check does not beat the last epoch's beyond noise (paired 95% interval includes 0)",
        best_minus_last=diff,
    )


def rekeep_run(run_dir: str | Path, rule: Optional[str] = None, data_dir: Optional[str] = None) -> Dict[str, Any]:
    """Re-apply a keep rule to a finished adversarial run: re-run the best and last epochs' PGD checks
    (same images, same generators as in training), choose, rewrite ``model.safetensors`` (BatchNorm
    re-estimated if the run's config asks), ``summary.json`` (weights, test and validation accuracy) and the
    config's ``keep``. A score made from the old weights (``sweep_trial.json``) is removed when the kept
    epoch changes, so ``tinyrobust sweep`` scores the trial again. Returns what it did."""
    import torch

    from ..config import dump_config, load_config
    from ..io_utils import atomic_write_json, atomic_write_text
    from ..rundir import (
        BEST_ROBUST_WEIGHTS_FILE,
        CONFIG_FILE,
        LAST_WEIGHTS_FILE,
        METRICS_FILE,
        SUMMARY_FILE,
        WEIGHTS_FILE,
        load_weights,
        read_summary,
        run_lock,
    )
    from .loop import _check_images, _threads, epoch_check, evaluate_accuracy, prepare, write_final_weights

    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    if not summary:
        raise TinyRobustError(f"{run_dir} holds no finished run (no {SUMMARY_FILE}); train or resume it first")
    cfg = load_config(run_dir / CONFIG_FILE)
    adv = cfg.train.adversarial
    rule = rule or adv.keep
    if rule not in KEEP_RULES:
        raise ConfigError(f"--keep: {rule!r} is not allowed; choose one of: {', '.join(KEEP_RULES)}")
    if adv.method == "none" or summary.get("best_robust_epoch") is None:
        raise TinyRobustError(f"{run_dir} is not an adversarial run with a per-epoch check: there is nothing to choose")
    previous = summary.get("weights") or {}
    best_file = run_dir / BEST_ROBUST_WEIGHTS_FILE
    if not best_file.is_file() and previous.get("kept") == "best_robust" and not cfg.train.bn_reestimate_batches:
        best_file = run_dir / WEIGHTS_FILE  # model.safetensors holds the best-check weights as trained
    for f in (best_file, run_dir / LAST_WEIGHTS_FILE):
        if not f.is_file():
            raise TinyRobustError(f"{f} is missing: the rule needs the best-check and last-epoch weights")

    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    recorded = {r["epoch"]: r["robust_check"]["robust_accuracy"] for r in rows if r.get("robust_check")}
    last_epoch = int(summary.get("epochs_trained") or cfg.train.epochs)
    best_epoch = int(summary["best_robust_epoch"])
    with run_lock(run_dir):
        torch.set_num_threads(_threads(cfg))
        prep = prepare(cfg, data_dir)
        model = prep.model
        check = _check_images(cfg, prep)
        guard: Dict[str, Any] = {"best_epoch": best_epoch, "stopped_at": summary.get("stopped_early_at_epoch")}
        reproduced = {}
        for epoch, path, key in (
            (best_epoch, best_file, "best_flags"),
            (last_epoch, run_dir / LAST_WEIGHTS_FILE, "last_flags"),
        ):
            load_weights(path, model)
            res = epoch_check(model, check, adv, cfg.seed, epoch - 1)
            guard[key] = res["robust_flags"]
            reproduced[epoch] = {"recorded": recorded.get(epoch), "now": res["robust_accuracy"]}
        decision = choose_kept(rule, guard, last_epoch)
        load_weights(best_file if decision["kept"] == "best_robust" else run_dir / LAST_WEIGHTS_FILE, model)
        write_final_weights(model, cfg, prep, run_dir)
        summary["weights"] = decision
        summary["test_accuracy"] = evaluate_accuracy(model, prep.test_x, prep.test_y)
        if prep.val_ds is not None:
            from ..data.loader import to_tensors

            summary["val_accuracy"] = evaluate_accuracy(model, *to_tensors(prep.val_ds))
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
        cfg.train.adversarial.keep = rule
        atomic_write_text(run_dir / CONFIG_FILE, dump_config(cfg))
        stale = []
        if previous.get("epoch") != decision["epoch"]:
            import shutil

            from ..sweep.trial import ATTACK_CACHE, RESULT_FILE  # a sweep's scores of the old weights

            for name in (RESULT_FILE, ATTACK_CACHE):
                path = run_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.is_file():
                    path.unlink()
                else:
                    continue
                stale.append(name)
    return {
        "run": str(run_dir),
        "previous": previous,
        "weights": decision,
        "check_reproduced": reproduced,
        "removed_stale": stale,
        "test_accuracy": summary["test_accuracy"],
        "val_accuracy": summary.get("val_accuracy"),
    }
