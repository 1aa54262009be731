"""Attack a trained run on a fixed, seeded test subset and write ``robustness.json``.

The subset depends only on (dataset, n, seed), so every model evaluated with the same
arguments is attacked on the same images and their numbers can be compared.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import AttackError
from ..io_utils import atomic_write_json, check_writable
from .masking import PROBE_DEFAULTS
from .registry import ATTACKS, ORDER, expand_attack_names, get_attack
from .runner import run_attacks, validate_eps
from .target import Target

DEFAULT_STOCHASTIC_EOT = 8  # EOT samples when the model declares stochastic inference

THREAT_MODELS = {
    "image": "L-inf in [0, 1] pixel space (normalisation is inside the model); eps in pixel units /255",
    "audio": "L-inf in the model's input-feature domain scaled to [0, 1] by the feature range; eps in "
             "units of 1/255 of that range (not a waveform-domain budget)",
}


def _check_match(x: np.ndarray, y: np.ndarray, info, model: torch.nn.Module, dataset: str, who: str) -> None:
    """One clear line when the data cannot be fed to the model (wrong dataset or run)."""
    want_shape, want_classes = tuple(info.input_shape), int(info.num_classes)
    if tuple(x.shape[1:]) != want_shape:
        raise AttackError(f"dataset {dataset!r} gives inputs of shape {tuple(x.shape[1:])} but {who} expects "
                          f"{want_shape}; evaluate it on the dataset it was trained on")
    out_classes, labels = Target(model, want_shape).num_classes, int(y.max()) + 1
    if out_classes != want_classes or labels > want_classes:
        raise AttackError(f"dataset {dataset!r} has labels up to {labels - 1} but {who} outputs {out_classes} "
                          f"classes (trained for {want_classes}); evaluate it on the dataset it was trained on")


def _model_name(config: dict):
    model = config.get("model")
    return model.get("name") if isinstance(model, dict) else model


def attack_run(run_dir, attacks, eps, n: int = 1000, seed: int = 0, data_dir=None, out=None, surrogate_run=None,
               params: dict | None = None, *, eot_samples: int | None = None, batch_size: int = 128,
               progress: bool = True, onnx_path=None, out_name: str = "robustness.json") -> dict:
    """Attack the model of ``run_dir``; ``attacks`` is a name list or a spec like ``"white,square"``.

    With ``onnx_path`` the target is the exported file (run through onnxruntime / the QONNX executor),
    the artifact an attacker faces on a device: only black-box attacks apply (it has no gradients),
    and the gradient-masking probes, which need gradients, are skipped.

    Finished attacks are kept in ``<out>/robustness_parts/``: a run killed part-way and started again
    reuses them (same images, budgets, seed and parameters) instead of attacking again.

    ``eot_samples=None`` uses 8 EOT samples for a model with ``stochastic=True`` and 1 otherwise.
    Writes ``robustness.json`` atomically into ``out`` (default: the run dir) and returns it."""
    from ..data import load_dataset
    from ..data.loader import stratified_subset, to_tensors
    from ..runs import load_run

    if isinstance(attacks, str):
        names = expand_attack_names(attacks, surrogate_available=surrogate_run is not None)
        skipped = [a for a in expand_attack_names(attacks) if a not in names]
    else:
        names, skipped = list(attacks), []
    budgets = validate_eps(eps)
    if n <= 0:
        raise AttackError(f"--n must be a positive number of test images; got {n}")
    run = load_run(run_dir)
    check_writable(Path(out) if out is not None else run.run_dir)  # fail now, not after the attacks
    if onnx_path is not None:
        white = [a for a in names if get_attack(a).family == "white"]
        if white:
            raise AttackError(f"--onnx targets the exported file, which gives no gradients: white-box attacks "
                              f"{', '.join(white)} cannot run on it; use --attacks black (or square, hopskipjump, ...)")
        from ..export.onnx_model import OnnxClassifierModule

        run.model = OnnxClassifierModule(onnx_path)
    dataset = run.config["data"]["dataset"]
    ds = load_dataset(dataset, "test", data_dir)
    indices = np.asarray(stratified_subset(ds.y, min(n, len(ds.y)), seed))
    x_t, y_t = to_tensors(ds, indices)
    x, y = x_t.numpy().astype(np.float32, copy=False), y_t.numpy().astype(np.int64, copy=False)
    info = run.dataset_info
    _check_match(x, y, info, run.model, dataset, f"the model in {run.run_dir}")

    surrogate = None
    if surrogate_run is not None:
        sur = load_run(surrogate_run)
        if sur.config["data"]["dataset"] != dataset:
            raise AttackError(f"surrogate run {sur.run_dir} was trained on {sur.config['data']['dataset']!r}, "
                              f"the target on {dataset!r}; use a surrogate trained on {dataset!r}")
        _check_match(x, y, sur.dataset_info, sur.model, dataset, f"the surrogate in {sur.run_dir}")
        surrogate = sur.model

    stochastic = bool(getattr(run.model, "stochastic", False))
    eot = eot_samples if eot_samples is not None else (DEFAULT_STOCHASTIC_EOT if stochastic else 1)
    results = run_attacks(run.model, x, y, names, budgets, seed=seed, surrogate=surrogate, params=params,
                          eot_samples=eot, batch_size=batch_size, progress=progress,
                          resume_dir=Path(out if out is not None else run.run_dir) / (
                              "robustness_parts" if onnx_path is None else "robustness_parts_onnx"),
                          masking_checks=onnx_path is None)
    results["notes"] += [f"{a} attack skipped: it needs a --surrogate run" for a in skipped]

    path = Path(out) if out is not None else Path(run.run_dir)
    path = path / out_name
    meta = {
        "run_dir": str(run.run_dir), "model": _model_name(run.config), "dataset": dataset,
        "dataset_source": getattr(info, "source", None), "data_kind": info.kind,
        "threat_model": THREAT_MODELS.get(info.kind, THREAT_MODELS["image"]),
        "subset": {"split": "test", "n": len(indices), "seed": seed,
                   "indices_sha1": hashlib.sha1(np.sort(indices).astype(np.int64).tobytes()).hexdigest()[:16]},
        "surrogate_run": str(surrogate_run) if surrogate_run is not None else None,
        "target": f"exported file {onnx_path}" if onnx_path is not None else "PyTorch model of the run",
        "output": str(path),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"tinyrobust": __version__, "torch": torch.__version__,
                     "art": importlib.metadata.version("adversarial-robustness-toolbox")},
    }
    results = {"meta": meta, **results}
    atomic_write_json(path, results)
    return results


def _fmt(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_table(results: dict) -> str:
    """Clean accuracy, the attack x eps grid of robust accuracy (%), then the masking verdicts."""
    eps = results["eps"]
    keys = [f"{e:g}" for e in eps]
    meta = results.get("meta", {})
    lines = []
    if meta:
        lines.append(f"{meta.get('model')} on {meta.get('dataset')} ({meta.get('threat_model')})")
    lines.append(f"clean accuracy {_fmt(results['clean_accuracy'])}% (n={results['n']}, seed {results['seed']}"
                 + (f", EOT {results['eot_samples']} samples" if results.get("stochastic") else "") + ")")
    head = (f"{'attack':<13}{'family':<7}" + "".join(f"{k + '/255':>9}" for k in keys)
            + f"{'queries/img':>13}{'time s':>9}")
    lines += ["robust accuracy (%) at L-inf eps", head, "-" * len(head)]
    footnotes = []
    for name, a in results["attacks"].items():
        accs = "".join(f"{_fmt(a['results'][k]['robust_accuracy']):>9}" for k in keys)
        if "unbounded" in a:
            u = a["unbounded"]
            q, t = u.get("queries_per_image"), u["wall_time_s"]
            label = name + "*"
            l2 = "-" if u["l2_median"] is None else f"{u['l2_median']:.1f}/255"
            footnotes.append(f"  {name}: {_fmt(u['accuracy_after_attack'])}% accuracy after the unbounded attack, "
                             f"median L2 of successes {l2}")
        else:
            per = [a["results"][k].get("queries_per_image") for k in keys]
            q = None if per[0] is None else float(np.mean(per))
            t, label = sum(a["results"][k]["wall_time_s"] for k in keys), name
        qs = "-" if q is None else f"{q:.0f}"
        lines.append(f"{label:<13}{a['family']:<7}{accs}{qs:>13}{t:>9.1f}")
    if results.get("worst_case"):
        lines.append(f"{'worst case':<20}" + "".join(f"{_fmt(results['worst_case'][k]['robust_accuracy']):>9}"
                                                   for k in keys))
    if footnotes:
        lines.append("* minimum-norm attack, counted at eps only if misclassified and L-inf distance <= eps")
        lines += footnotes
    checks = results.get("masking_checks")
    if checks:
        lines.append("gradient-masking checks:")
        for c in checks["checks"]:
            status = {True: "PASS", False: "FAIL", None: "skip"}[c["passed"]]
            lines.append(f"  {status} {c['check']}: {c['detail']}")
        lines.append(f"verdict: {checks['verdict']}")
    lines += [f"note: {note}" for note in results.get("notes", [])]
    return "\n".join(lines)


def list_attacks() -> str:
    """Each attack with its family, threat model and defaults (``tinyrobust attack --list``)."""
    lines = []
    for name in ORDER:
        spec = ATTACKS.get(name)
        defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items()) or "none"
        lines += [f"{name:<12} {spec.family}-box  {spec.describe()}", f"{'':<12} defaults: {defaults}"]
    probes = ", ".join(f"{k}={v}" for k, v in PROBE_DEFAULTS.items())
    lines += [f"{'masking':<12} gradient-masking probes (extra PGD runs), defaults: {probes}",
              "families: white, black, all; override a default with --set ATTACK.KEY=VALUE"]
    return "\n".join(lines)
