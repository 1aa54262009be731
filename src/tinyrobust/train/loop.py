"""The training loop: QAT + Jacobian regularization, with atomic per-epoch checkpoints and resume.

Determinism: an epoch's data order, augmentation, JR projections and stochastic rounding are all
seeded from (seed, epoch), and the checkpoint also holds the Brevitas quantizer state that
``state_dict`` leaves out (checkpoint.quant_runtime_state), so a run resumed from its last checkpoint
ends with the same bits as one that was never interrupted, given the same torch thread count
(tests/test_train.py, docs/guarantees.md).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F  # noqa: F401  (tests patch loop.F.cross_entropy; the loss lives in adversarial.py)
from tqdm import tqdm

from ..config import RunConfig, dump_config, load_config
from ..errors import CheckpointError, ConfigError, TinyRobustError, TrainingDiverged
from ..inference import batched_accuracy
from ..io_utils import append_jsonl, atomic_write_json, atomic_write_text, check_writable
from ..paths import portable_text

# the run-directory contract lives in rundir.py; re-exported here for `loop.SUMMARY_FILE` etc.
from ..rundir import (  # noqa: F401
    BEST_ROBUST_WEIGHTS_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    ENV_FILE,
    LAST_WEIGHTS_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    WEIGHTS_FILE,
    environment,
    load_weights,
    read_summary,
    run_lock,
    save_weights,
)
from .adversarial import AttackTwin, adversarial_generator, robust_check, step_size_of, training_step
from .checkpoint import load_checkpoint, quant_runtime_state, restore_quant_runtime_state, save_checkpoint
from .jacobian import check_jr_layers
from .keep import choose_kept
from .oscillation import FlipCounter, dampen_weight_at, dampening_penalty


def thread_env(threads: int) -> dict:
    """The environment that pins a child process (a sweep trial, a ``reproduce --jobs`` worker) to
    ``threads`` threads: ``$TINYROBUST_THREADS`` (read by :func:`_threads`) and the BLAS pools."""
    return {k: str(threads) for k in ("TINYROBUST_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def _threads(cfg: RunConfig) -> int:
    """torch threads: ``$TINYROBUST_THREADS`` overrides the config (e.g. two runs side by side on two
    cores, one thread each); it changes speed, not the experiment (only the last bits of float sums,
    so a resume is bit-exact at the same count: the checkpoint records it)."""
    env = os.environ.get("TINYROBUST_THREADS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise TinyRobustError(f"TINYROBUST_THREADS must be a positive integer, got {env!r}")
        return int(env)
    return cfg.train.threads


def lr_at(cfg: RunConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay to zero (or constant), as a pure function of the step."""
    t = cfg.train
    warm = int(t.warmup_epochs * steps_per_epoch)
    if step < warm:
        return t.lr * (step + 1) / warm
    if t.schedule == "constant":
        return t.lr
    progress = (step - warm) / max(1, total_steps - warm)
    return t.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    decay, no_decay = [], []
    for p in model.parameters():
        # no weight decay on BN/bias/quantizer scales: decaying a learned scale shrinks the grid
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0)
    return torch.optim.Adam(groups, lr=t.lr)


def reseed_stochastic_quantizers(model: torch.nn.Module, seed: int) -> None:
    """Brevitas' stochastic rounding owns a private generator; seed it per epoch for resumability."""
    from brevitas.core.function_wrapper.stochastic_round import StochasticRoundSte

    for i, m in enumerate(model.modules()):
        if isinstance(m, StochasticRoundSte):
            m.generator.manual_seed(seed + i)


def evaluate_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in eval mode, training flag restored (the one batched loop, inference.py)."""
    return batched_accuracy(model, x, y, batch_size)


@dataclass
class Prepared:
    cfg: RunConfig
    model: Any
    info: Any
    train_ds: Any
    test_x: torch.Tensor
    test_y: torch.Tensor
    data_source: str
    val_ds: Any = None  # the validation split (data.val_size > 0), held out of the training data
    val_record: Optional[Dict[str, Any]] = None  # its size, seed and indices' sha256 (env.json, summary.json)


def prepare(cfg: RunConfig, data_dir: Optional[str] = None, need_train: bool = True) -> Prepared:
    """Load data and build the model a config describes (shared by train and eval)."""
    from ..data import dataset_info, load_dataset
    from ..data.loader import stratified_subset, to_tensors
    from ..data.splits import split_dataset, split_record
    from ..runs import model_for_config

    info = dataset_info(cfg.data.dataset)
    ddir = data_dir or cfg.data.data_dir
    train_ds = val_ds = val_record = None
    if need_train:
        full_train = load_dataset(cfg.data.dataset, "train", ddir)
        # the validation images leave the training data first, so train_subset never picks them;
        # val_size 0 returns full_train itself (training exactly as before the split existed)
        train_ds = split_dataset(full_train, "train", cfg.data.val_size, cfg.data.val_seed)
        if cfg.data.val_size:
            val_ds = split_dataset(full_train, "val", cfg.data.val_size, cfg.data.val_seed)
            val_record = split_record(full_train.y, cfg.data.val_size, cfg.data.val_seed)
        if cfg.data.train_subset and cfg.data.train_subset < len(train_ds):
            idx = stratified_subset(train_ds.y, cfg.data.train_subset, cfg.seed)
            train_ds = type(train_ds)(**{**train_ds.__dict__, "x": train_ds.x[idx], "y": train_ds.y[idx]})
    test_ds = load_dataset(cfg.data.dataset, "test", ddir)
    idx = None
    if cfg.data.test_subset and cfg.data.test_subset < len(test_ds):
        idx = stratified_subset(test_ds.y, cfg.data.test_subset, cfg.seed)
    test_x, test_y = to_tensors(test_ds, idx)
    model, _ = model_for_config(cfg)
    return Prepared(cfg, model, info, train_ds, test_x, test_y, test_ds.source, val_ds, val_record)


def model_summary(model, info) -> Dict[str, Any]:
    table = model.layer_table(info.input_shape)
    return {
        "parameters": model.num_parameters(),
        "layer_parameters": sum(r["weights"] + r["biases"] for r in table),
        "weight_kb": sum(r["weight_bytes"] for r in table) / 1024,
        "layers": table,
    }


def train_run(
    cfg: RunConfig, run_dir: Path, *, resume: bool = False, data_dir: Optional[str] = None, progress: bool = True
) -> Dict[str, Any]:
    """Train ``cfg`` into ``run_dir``; with ``resume`` continue from the last checkpoint."""
    run_dir = Path(run_dir)
    if resume and (run_dir / SUMMARY_FILE).is_file():  # finished: nothing to do
        return read_summary(run_dir)
    check_writable(run_dir)
    with run_lock(run_dir):
        return _train_run(cfg, run_dir, resume=resume, data_dir=data_dir, progress=progress)


def _train_run(
    cfg: RunConfig, run_dir: Path, *, resume: bool, data_dir: Optional[str], progress: bool
) -> Dict[str, Any]:
    from ..data.loader import BatchIterator

    ckpt_path = run_dir / CHECKPOINT_FILE
    if (run_dir / SUMMARY_FILE).is_file() and resume:  # finished while we waited for the lock
        return read_summary(run_dir)
    if not resume and (ckpt_path.exists() or (run_dir / SUMMARY_FILE).exists()):
        raise TinyRobustError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose another --run-dir"
        )
    if resume and (run_dir / CONFIG_FILE).is_file():
        saved = load_config(run_dir / CONFIG_FILE)
        if dump_config(saved) != dump_config(cfg):
            print(f"note: resuming with the config saved in {run_dir / CONFIG_FILE}", file=sys.stderr)
        cfg = saved
    atomic_write_text(run_dir / CONFIG_FILE, dump_config(cfg))

    threads = _threads(cfg)
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    prep = prepare(cfg, data_dir)
    model, info, train_ds = prep.model, prep.info, prep.train_ds
    check_jr_layers(model, cfg.jr.layers)  # fail before any training, not at the first step
    if not (run_dir / ENV_FILE).is_file():
        env = environment(threads, cfg.seed)
        env["data_source"] = portable_text(prep.data_source, data_dir or cfg.data.data_dir)
        if prep.val_record is not None:
            env["val_split"] = prep.val_record
        atomic_write_json(run_dir / ENV_FILE, env)
    adv = cfg.train.adversarial
    check = _check_images(cfg, prep) if adv.method != "none" and adv.check_n > 0 else None
    val_x = val_y = None
    if prep.val_ds is not None:
        from ..data.loader import to_tensors

        val_x, val_y = to_tensors(prep.val_ds)
    augment = info.augment if cfg.train.augment is None else cfg.train.augment
    batches = len(
        BatchIterator(
            train_ds, cfg.train.batch_size, shuffle=True, augment=False, seed=cfg.seed, epoch=0, drop_last=True
        )
    )
    if batches == 0:
        raise ConfigError(
            f"train.batch_size: {cfg.train.batch_size} is larger than the training set "
            f"({len(train_ds)} examples); lower it"
        )
    steps_per_epoch = min(batches, cfg.train.max_batches_per_epoch or batches)
    _remove_stale_temp_files(run_dir)

    start_epoch = 0
    guard: Dict[str, Any] = {
        "best_robust": None,
        "best_epoch": None,
        "stopped_at": None,
        "best_flags": None,  # per-image check outcomes of the best and the latest epoch (train/keep.py)
        "last_flags": None,
    }
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        try:
            # the model first: Brevitas re-creates its quantizer modules (and their scale
            # Parameters) in load_state_dict, so an optimizer made before would update orphans
            model.load_state_dict(state["model"])
            restore_quant_runtime_state(model, state.get("quant_state", {}))
            opt = make_optimizer(cfg, model)
            opt.load_state_dict(state["optimizer"])
            start_epoch = int(state["epoch"])
            guard.update(state.get("guard", {}))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            detail = " ".join(str(exc).split())[:300]
            raise CheckpointError(
                f"{ckpt_path} does not match this run's model and optimizer ({type(exc).__name__}: {detail})"
            ) from None
        _truncate_metrics(run_dir / METRICS_FILE, start_epoch)
        print(f"resuming {run_dir} after epoch {start_epoch}", file=sys.stderr)
        if state.get("threads", threads) != threads:
            print(
                f"note: the checkpoint was written with {state['threads']} torch threads, this run uses {threads}: "
                "float sums change order, so the result will not be bit-identical to an uninterrupted run",
                file=sys.stderr,
            )
    else:
        opt = make_optimizer(cfg, model)
        if (run_dir / METRICS_FILE).exists():
            (run_dir / METRICS_FILE).unlink()

    total_steps = steps_per_epoch * cfg.train.epochs
    # built after a resume's load_state_dict, which re-creates Brevitas' quantizer modules
    twin = AttackTwin.build(model) if adv.method != "none" else None
    t_start = time.time()
    for epoch in range(start_epoch, cfg.train.epochs):
        if guard["stopped_at"] is not None:  # resumed after the early stop's checkpoint
            break
        epoch_seed = cfg.seed * 100003 + epoch
        torch.manual_seed(epoch_seed)
        reseed_stochastic_quantizers(model, epoch_seed)
        model.train()
        it = BatchIterator(
            train_ds, cfg.train.batch_size, shuffle=True, augment=augment, seed=cfg.seed, epoch=epoch, drop_last=True
        )
        adv_gen = adversarial_generator(cfg.seed, epoch) if adv.method != "none" else None
        twin_steps = 0
        if twin is not None:
            twin.recheck()
        sums = {"loss": 0.0, "ce": 0.0, "jr": 0.0, "correct": 0, "seen": 0, "robust": 0, "kl": 0.0, "dampen": 0.0}
        jr_parts: Dict[str, float] = {}
        flips = FlipCounter(model)
        t0 = time.time()
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"{cfg.name} epoch {epoch + 1}/{cfg.train.epochs}",
            disable=not progress,
            leave=False,
            file=sys.stderr,
        )
        for i, (x, y) in enumerate(it):
            if i >= steps_per_epoch:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, epoch * steps_per_epoch + i, total_steps, steps_per_epoch)
            search = twin.current(x) if twin is not None else None
            twin_steps += search is not None
            out = training_step(
                model,
                x,
                y,
                adv=adv,
                jr=cfg.jr,
                label_smoothing=cfg.train.label_smoothing,
                generator=adv_gen,
                search_model=search,
            )
            loss, ce, penalty, parts = out.loss, out.ce, out.penalty, out.parts
            if cfg.train.dampen > 0:
                dampen = dampening_penalty(flips.layers)
                sums["dampen"] += dampen.item() * len(y)
                loss = loss + dampen_weight_at(cfg.train.dampen, epoch * steps_per_epoch + i, total_steps) * dampen
            if not torch.isfinite(loss):
                bar.close()
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; " + _kept(epoch, run_dir)
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            flips.step()
            n = len(y)
            sums["loss"] += loss.item() * n
            sums["ce"] += ce.item() * n
            sums["jr"] += (penalty.item() if penalty is not None else 0.0) * n
            sums["correct"] += out.clean_correct or 0
            sums["robust"] += out.robust_correct or 0
            sums["kl"] += (out.trades_kl or 0.0) * n
            sums["seen"] += n
            for k, v in parts.items():
                jr_parts[k] = jr_parts.get(k, 0.0) + v * n
            bar.update(1)
            acc_key = "correct" if out.clean_correct is not None else "robust"
            bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.3f}", acc=f"{sums[acc_key] / sums['seen']:.3f}")
        bar.close()
        train_time = time.time() - t0
        seen = max(1, sums["seen"])
        # with a validation split the test split is touched only for the run's final number (summary)
        test_acc = evaluate_accuracy(model, prep.test_x, prep.test_y) if val_x is None else None
        row = {
            "epoch": epoch + 1,
            "train_loss": sums["loss"] / seen,
            "train_ce": sums["ce"] / seen,
            "train_jr_penalty": sums["jr"] / seen,
            "jr_estimates": {k: v / seen for k, v in jr_parts.items()},
            "weight_flip_rate": flips.rate(),
            "train_accuracy": sums["correct"] / seen,
            "test_accuracy": test_acc,
            "lr_end": opt.param_groups[0]["lr"],
            "epoch_time_s": train_time,
            "images_per_s": sums["seen"] / max(train_time, 1e-9),
        }
        if cfg.train.dampen > 0:
            row["train_dampen_penalty"] = sums["dampen"] / seen
        if val_x is not None:
            row["val_accuracy"] = evaluate_accuracy(model, val_x, val_y)
        if adv.method != "none":
            # fgsm_rs and pgd train on adversarial inputs only: no clean training accuracy to report
            row["train_accuracy"] = sums["correct"] / seen if adv.method == "trades" else None
            row["train_robust_accuracy"] = sums["robust"] / seen
            if adv.method == "trades":
                row["train_trades_kl"] = sums["kl"] / seen
            # steps whose perturbation search ran on the frozen copy (train/adversarial.py AttackTwin)
            row["attack_twin_steps"] = twin_steps
            if twin is not None and twin.disabled:
                row["attack_twin_disabled"] = twin.disabled
        bad = _non_finite(model)
        if bad:
            raise TrainingDiverged(f"{bad} became NaN/inf in epoch {epoch + 1}; " + _kept(epoch, run_dir))
        if check is not None:
            row["robust_check"] = _guard_epoch(model, check, adv, cfg.seed, epoch, guard, run_dir)
        append_jsonl(run_dir / METRICS_FILE, row)
        save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch + 1,
                "quant_state": quant_runtime_state(model),
                "threads": threads,
                **({"guard": dict(guard)} if adv.method != "none" else {}),
            },
        )
        if progress:
            acc = (
                f"train acc {row['train_accuracy']:.3f}"
                if row["train_accuracy"] is not None
                else f"train robust acc {row['train_robust_accuracy']:.3f}"
            )
            rc = row.get("robust_check")
            rc = f" {rc['source']} PGD-{rc['steps']} robust acc {rc['robust_accuracy']:.3f}" if rc else ""
            print(
                f"{cfg.name} epoch {epoch + 1}/{cfg.train.epochs}: loss {row['train_loss']:.3f} {acc} "
                + (f"test acc {test_acc:.4f}" if test_acc is not None else f"val acc {row['val_accuracy']:.4f}")
                + f"{rc} ({row['images_per_s']:.0f} img/s)",
                file=sys.stderr,
            )
        if guard["stopped_at"] is not None:
            print(
                f"{cfg.name}: early stop after epoch {epoch + 1}: the PGD check fell more than "
                f"{adv.early_stop_drop:.0%} below its best (epoch {guard['best_epoch']}), the sign of "
                f"catastrophic overfitting; the best-robust weights are in {BEST_ROBUST_WEIGHTS_FILE}",
                file=sys.stderr,
            )
            break

    kept = None
    if check is not None:
        # both ends of an adversarial run stay on disk, as trained; model.safetensors (what eval, attack, export
        # and the report read) holds the one train.adversarial.keep chooses (train/keep.py)
        save_weights(run_dir / LAST_WEIGHTS_FILE, model)
        kept = choose_kept(adv.keep, guard, guard["stopped_at"] or cfg.train.epochs)
        if kept["kept"] == "best_robust":
            load_weights(run_dir / BEST_ROBUST_WEIGHTS_FILE, model)
    write_final_weights(model, cfg, prep, run_dir)
    summary = {
        "name": cfg.name,
        "model": cfg.model.name,
        "dataset": cfg.data.dataset,
        "data_source": portable_text(prep.data_source, data_dir or cfg.data.data_dir),
        "epochs": cfg.train.epochs,
        "test_accuracy": evaluate_accuracy(model, prep.test_x, prep.test_y),
        "test_examples": len(prep.test_y),
        "train_time_s_this_session": time.time() - t_start,
        **{k: v for k, v in model_summary(model, info).items() if k != "layers"},
    }
    if prep.val_record is not None:
        summary["val_split"] = prep.val_record
        summary["val_accuracy"] = evaluate_accuracy(model, val_x, val_y)
    if adv.method != "none":
        summary["adversarial"] = {
            "method": adv.method,
            "eps": adv.eps,
            "step_size": step_size_of(adv),
            **({"steps": adv.steps} if adv.method != "fgsm_rs" else {}),
            **({"beta": adv.beta} if adv.method == "trades" else {}),
        }
        summary["epochs_trained"] = guard["stopped_at"] or cfg.train.epochs
        summary["stopped_early_at_epoch"] = guard["stopped_at"]
        if check is not None:
            summary["robust_check"] = {
                "source": check["source"],
                "n": len(check["y"]),
                "steps": adv.check_steps,
                "eps": adv.eps,
            }
            summary["best_robust_epoch"] = guard["best_epoch"]
            summary["best_robust_check_accuracy"] = guard["best_robust"]
            summary["best_robust_weights"] = BEST_ROBUST_WEIGHTS_FILE
            summary["weights"] = kept
    atomic_write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def _check_images(cfg: RunConfig, prep: Prepared) -> Dict[str, Any]:
    """Images of the per-epoch PGD check: a stratified subset of the validation split, or (no
    validation split) a fixed stratified subset of the training images, said so in ``source``."""
    from ..data.loader import stratified_subset, to_tensors

    ds, source = (prep.val_ds, "val") if prep.val_ds is not None else (prep.train_ds, "train")
    n = min(cfg.train.adversarial.check_n, len(ds))
    x, y = to_tensors(ds, stratified_subset(ds.y, n, cfg.data.val_seed))
    return {"x": x, "y": y, "source": source}


def write_final_weights(model, cfg: RunConfig, prep: Prepared, run_dir: Path) -> None:
    """``model.safetensors`` from the kept weights in ``model``: BatchNorm statistics re-estimated first
    when the config asks (train/bn_reestimate.py); shared by the loop and ``rekeep`` (train/keep.py)."""
    if cfg.train.bn_reestimate_batches:
        from .bn_reestimate import reestimate_bn

        augment = prep.info.augment if cfg.train.augment is None else cfg.train.augment
        reestimate_bn(
            model, prep.train_ds, cfg.train.bn_reestimate_batches, cfg.train.batch_size, seed=cfg.seed, augment=augment
        )
    save_weights(run_dir / WEIGHTS_FILE, model)


def epoch_check(model, check: Dict[str, Any], adv, seed: int, epoch: int) -> Dict[str, Any]:
    """The per-epoch PGD check after (0-based) ``epoch``, with that epoch's own generator: the one
    definition, so ``rekeep`` (train/keep.py) re-runs exactly the check training recorded."""
    return robust_check(
        model,
        check["x"],
        check["y"],
        eps=adv.eps,
        steps=adv.check_steps,
        gen=adversarial_generator(seed, epoch, stream=1),
    )


def _guard_epoch(
    model, check: Dict[str, Any], adv, seed: int, epoch: int, guard: Dict[str, Any], run_dir: Path
) -> Dict[str, Any]:
    """The catastrophic-overfitting guard after one epoch: PGD check, keep the best-robust weights
    (written before the checkpoint, so a kill in between redoes the epoch and rewrites the same
    file), and mark an early stop when the check falls ``adv.early_stop_drop`` below its best."""
    result = epoch_check(model, check, adv, seed, epoch)
    flags = result.pop("robust_flags")  # per image: in the checkpoint's guard, not in every metrics row
    result = {"source": check["source"], **result}
    if check["source"] == "train":
        result["note"] = "no validation split (data.val_size 0): a fixed subset of the training images"
    acc = result["robust_accuracy"]
    guard["last_flags"] = flags
    if guard["best_robust"] is None or acc > guard["best_robust"]:
        guard["best_robust"], guard["best_epoch"], guard["best_flags"] = acc, epoch + 1, flags
        save_weights(run_dir / BEST_ROBUST_WEIGHTS_FILE, model)
    elif adv.early_stop_drop is not None and guard["best_robust"] - acc >= adv.early_stop_drop:
        guard["stopped_at"] = epoch + 1
        result["early_stop"] = True
    return result


def _kept(epoch: int, run_dir: Path) -> str:
    where = (
        f"the last good checkpoint (after epoch {epoch}) is kept in {run_dir}"
        if epoch > 0
        else f"no checkpoint was written yet in {run_dir}"
    )
    return f"{where}. Lower train.lr or jr weights and start again."


def _non_finite(model: torch.nn.Module) -> Optional[str]:
    """Name of the first parameter or buffer holding NaN/inf (a finite loss can still step into it)."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def _remove_stale_temp_files(run_dir: Path) -> None:
    """A kill during an atomic write leaves its temp file (``.<name>.<random>.tmp``); drop them."""
    for name in (
        CHECKPOINT_FILE,
        WEIGHTS_FILE,
        METRICS_FILE,
        SUMMARY_FILE,
        CONFIG_FILE,
        ENV_FILE,
        BEST_ROBUST_WEIGHTS_FILE,
        LAST_WEIGHTS_FILE,
    ):
        for tmp in run_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _truncate_metrics(path: Path, upto_epoch: int) -> None:
    """Drop metric lines of epochs after the checkpoint (written before a kill, then redone)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if row.get("epoch", 0) <= upto_epoch:
            keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))
