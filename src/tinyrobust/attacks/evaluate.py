"""Attack a trained run on a fixed, seeded test subset and write ``robustness.json`` (schema 2).

The subset depends only on (dataset, n, seed) and is nested (the first k of n images are the
k-image subset), so every model evaluated with the same seed is attacked on the same images,
in the same order, and their per-image outcomes can be paired.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import AttackError
from ..io_utils import atomic_write_json, check_writable, sha256_file
from ..paths import portable_text
from ..rundir import ROBUSTNESS_FILE, WEIGHTS_FILE
from .masking import CHECKS, PROBE_DEFAULTS
from .registry import ATTACKS, ORDER, TRANSFER_PREFIX, expand_attack_names, get_attack, split_transfer
from .runner import run_attacks, validate_eps
from .target import Target

DEFAULT_STOCHASTIC_EOT = 8  # EOT samples when the model declares stochastic inference
SCHEMA = 2


def file_sha256(path) -> str | None:
    """sha256 of a file (the run's model.safetensors), None if it does not exist."""
    return sha256_file(path) if Path(path).is_file() else None


def _relative(path, base=None) -> str:
    """``path`` relative to ``base`` (default: the working directory) when below it, never absolute."""
    path = Path(os.path.abspath(path))
    for root in ([Path(os.path.abspath(base))] if base is not None else []) + [Path.cwd()]:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            continue
    return path.name


def dataset_source(source, data_root) -> str | None:
    """The loaded dataset's source description written portably (``$TINYROBUST_DATA/...``; no
    absolute machine paths in results)."""
    if not source:
        return None
    return portable_text(str(source), data_root)


THREAT_MODELS = {
    "image": "L-inf in [0, 1] pixel space (normalisation is inside the model); eps in pixel units /255",
    "audio": "L-inf in the model's input-feature domain scaled to [0, 1] by the feature range; eps in "
    "units of 1/255 of that range (not a waveform-domain budget)",
    "waveform": "L-inf on the 16-bit samples of the 1 s clip (data/waveform.py): the input is the waveform "
    "in [0, 1] = (sample + 32768) / 65535, so eps k/255 is k * 257 sample units; white-box gradients "
    "pass through the differentiable log-mel front end, black-box attacks query waveform in, label out",
}
# Where the attacker acts: on the model's own input ("feature": pixels, log-mel images), or, for a model
# trained on speech_commands_logmel, on the waveform in front of the log-mel front end.
DOMAINS = ("feature", "waveform")


def _check_match(x: np.ndarray, y: np.ndarray, info, model: torch.nn.Module, dataset: str, who: str) -> None:
    """One clear line when the data cannot be fed to the model (wrong dataset or run)."""
    want_shape, want_classes = tuple(info.input_shape), int(info.num_classes)
    if tuple(x.shape[1:]) != want_shape:
        raise AttackError(
            f"dataset {dataset!r} gives inputs of shape {tuple(x.shape[1:])} but {who} expects "
            f"{want_shape}; evaluate it on the dataset it was trained on"
        )
    out_classes, labels = Target(model, want_shape).num_classes, int(y.max()) + 1
    if out_classes != want_classes or labels > want_classes:
        raise AttackError(
            f"dataset {dataset!r} has labels up to {labels - 1} but {who} outputs {out_classes} "
            f"classes (trained for {want_classes}); evaluate it on the dataset it was trained on"
        )


def _attack_domain(domain: str, run, onnx_path) -> tuple:
    """What the attacker of ``domain`` works on, for a loaded run: (a function turning a trained model
    into the module it queries, the DatasetInfo of the inputs it perturbs, the threat model's words)."""
    if domain == "feature":
        info = run.dataset_info
        return (lambda model: model), info, THREAT_MODELS.get(info.kind, THREAT_MODELS["image"])
    trained_on = run.config["data"]["dataset"]
    if trained_on != "speech_commands_logmel":
        raise AttackError(
            f"the waveform domain needs a run trained on speech_commands_logmel; {run.run_dir} was trained on "
            f"{trained_on!r}"
        )
    if onnx_path is not None:
        raise AttackError("the exported ONNX file takes log-mel images, not waveforms: attack it in the feature domain")
    from ..data.waveform import WAV_INFO, WaveformModel

    return (lambda model: WaveformModel(model).eval()), WAV_INFO, THREAT_MODELS["waveform"]


def _model_name(config: dict):
    model = config.get("model")
    return model.get("name") if isinstance(model, dict) else model


def attack_run(
    run_dir,
    attacks,
    eps,
    n: int = 1000,
    seed: int = 0,
    data_dir=None,
    out=None,
    surrogate_run=None,
    params: dict | None = None,
    *,
    eot_samples: int | None = None,
    batch_size: int = 128,
    progress: bool = True,
    onnx_path=None,
    out_name: str = ROBUSTNESS_FILE,
    target: str = "frozen",
    surrogate_runs: dict | None = None,
    cascade: bool = False,
    white_box_in_full: bool = True,
    domain: str = "feature",
    parts_only: bool = False,
    prior_path=None,
) -> dict:
    """Attack the model of ``run_dir``; ``attacks`` is a name list or a spec like ``"white,square"``.

    With ``onnx_path`` the target is the exported file (run through onnxruntime / the QONNX executor),
    the artifact an attacker faces on a device: only black-box attacks apply (it has no gradients),
    and the gradient-masking probes, which need gradients, are skipped.

    Finished attacks are kept in ``<out>/robustness_parts/``: a run killed part-way and started again
    reuses them (same images, budgets, seed and parameters) instead of attacking again.

    ``surrogate_runs={key: run_dir}`` gives one ``transfer@KEY`` entry per surrogate (``surrogate_run``
    is the single-surrogate shorthand, entry ``transfer``); a surrogate whose model.safetensors is the
    target's (same sha256) is skipped and the reason recorded in ``skipped``. ``cascade=True`` runs
    each attack only on the images every earlier one left correct (see :func:`run_attacks`).

    ``domain="waveform"`` attacks a ``speech_commands_logmel`` run on the official test WAVs through the
    differentiable log-mel front end (:class:`tinyrobust.data.waveform.WaveformModel`; surrogates are
    wrapped the same way); eps is then in 1/255 of the 16-bit sample range (257 sample units).

    ``eot_samples=None`` uses 8 EOT samples for a model that is stochastic (declared or measured) and 1
    otherwise. Writes ``robustness.json`` atomically into ``out`` (default: the run dir) and returns it.
    ``parts_only=True`` (a work unit of ``reproduce --jobs``: one eps of one model) only fills
    ``robustness_parts/``: no masking probes, no ``robustness.json``; a later call with every eps reuses
    the parts and writes the file.

    ``prior_path``: a ``robustness.json`` of the same weights written by another call (the grid that owns
    a shared run, at more eps): every (attack, eps) unit it provably shares with this call is taken from
    it instead of attacked again (:class:`.runner.PriorResult`; recorded under ``reused``)."""
    from ..data import load_dataset
    from ..data.loader import nested_stratified_order, to_tensors
    from ..paths import data_dir as resolve_data_dir
    from ..runs import load_run

    surrogate_runs = dict(surrogate_runs or {})
    if surrogate_run is not None and surrogate_runs:
        raise AttackError("give either surrogate_run (one surrogate) or surrogate_runs (several), not both")
    have_surrogate = surrogate_run is not None or bool(surrogate_runs)
    if isinstance(attacks, str):
        names = expand_attack_names(attacks, surrogate_available=have_surrogate)
        skipped = [a for a in expand_attack_names(attacks) if a not in names]
    else:
        names, skipped = list(attacks), []
    if surrogate_runs:  # "transfer" -> one transfer@KEY per surrogate
        expanded = []
        for a in names:
            expanded += [f"{TRANSFER_PREFIX}{k}" for k in surrogate_runs] if a == "transfer" else [a]
        names = list(dict.fromkeys(expanded))
    budgets = validate_eps(eps)
    if domain not in DOMAINS:
        raise AttackError(f"unknown attack domain {domain!r}; choose one of: {', '.join(DOMAINS)}")
    if n <= 0:
        raise AttackError(f"--n must be a positive number of test images; got {n}")
    run = load_run(run_dir)
    check_writable(Path(out) if out is not None else run.run_dir)  # fail now, not after the attacks
    if onnx_path is not None:
        white = [a for a in names if get_attack(a).family in ("white", "ensemble")]
        if white:
            raise AttackError(
                f"--onnx targets the exported file, which gives no gradients: white-box attacks "
                f"{', '.join(white)} cannot run on it; use --attacks black (or square, hopskipjump, ...)"
            )
        from ..export.onnx_model import OnnxClassifierModule

        run.model = OnnxClassifierModule(onnx_path)
    trained_on = run.config["data"]["dataset"]
    wrap, info, threat_model = _attack_domain(domain, run, onnx_path)
    dataset = info.name  # the dataset whose test images the attacker perturbs
    ds = load_dataset(dataset, "test", data_dir)
    indices = np.asarray(nested_stratified_order(ds.y, min(n, len(ds.y)), seed))
    x_t, y_t = to_tensors(ds, indices)
    x, y = x_t.numpy().astype(np.float32, copy=False), y_t.numpy().astype(np.int64, copy=False)
    _check_match(x, y, info, wrap(run.model), dataset, f"the model in {run.run_dir}")

    model_sha = file_sha256(Path(run.run_dir) / WEIGHTS_FILE)
    wanted = {split_transfer(a)[1] or "transfer": a for a in names if get_attack(a).needs_surrogate}
    sur_dirs = surrogate_runs or ({"transfer": surrogate_run} if surrogate_run is not None else {})
    surrogates, pre_skipped, sur_meta = {}, {}, {}
    for key, sdir in sur_dirs.items():
        if key not in wanted:
            continue
        sha = file_sha256(Path(sdir) / WEIGHTS_FILE)
        sur_meta[key] = {"run": _relative(sdir), "sha256": sha}
        if sha is not None and sha == model_sha:
            pre_skipped[wanted[key]] = (
                f"surrogate {key!r} is the target itself (same model.safetensors sha256 "
                f"{sha[:12]}): a transfer from itself would be a white-box attack"
            )
            continue
        sur = load_run(sdir)
        if sur.config["data"]["dataset"] != trained_on:
            raise AttackError(
                f"surrogate run {sur.run_dir} was trained on {sur.config['data']['dataset']!r}, "
                f"the target on {trained_on!r}; use a surrogate trained on {trained_on!r}"
            )
        surrogates[key] = wrap(sur.model)
        _check_match(x, y, info, surrogates[key], dataset, f"the surrogate in {sur.run_dir}")
    surrogate = surrogates.pop("transfer", None) if surrogate_run is not None else None

    eot = eot_samples if eot_samples is not None else DEFAULT_STOCHASTIC_EOT  # used only if the model is random
    from .target import attack_model  # "frozen" (default) or "brevitas": same logits, see models/freeze.py

    attacked = run.model if onnx_path is not None else wrap(attack_model(run.model, target))
    prior = None
    if prior_path is not None and onnx_path is None:
        prior = _load_prior(
            prior_path,
            model_sha=model_sha,
            dataset=dataset,
            domain=domain,
            indices=[int(i) for i in indices],
            target=f"PyTorch model of the run ({target})",
        )
    results = run_attacks(
        attacked,
        x,
        y,
        names,
        budgets,
        seed=seed,
        surrogate=surrogate,
        surrogates=surrogates or None,
        skipped=pre_skipped,
        cascade=cascade,
        white_box_in_full=white_box_in_full,
        params=params,
        model_id=file_sha256(onnx_path)
        if onnx_path is not None
        else (model_sha if domain == "feature" else f"{model_sha}+{domain}"),
        eot_samples=eot,
        batch_size=batch_size,
        progress=progress,
        resume_dir=Path(out if out is not None else run.run_dir)
        / ("robustness_parts" if onnx_path is None else "robustness_parts_onnx"),
        masking_checks=onnx_path is None and not parts_only,
        prior=prior,
    )
    if parts_only:
        return results
    results["notes"] += [f"{a} attack skipped: it needs a --surrogate run" for a in skipped]
    for a in skipped:
        results["skipped"].setdefault(a, "it needs a surrogate run (--surrogate), none was given")

    path = Path(out) if out is not None else Path(run.run_dir)
    path = path / out_name
    meta = {
        "run_dir": _relative(run.run_dir),
        "model": _model_name(run.config),
        "dataset": dataset,
        "trained_on": trained_on,
        "domain": domain,
        "model_sha256": model_sha,
        "dataset_source": dataset_source(getattr(ds, "source", None), resolve_data_dir(data_dir)),
        "data_kind": info.kind,
        "threat_model": threat_model,
        "subset": {
            "split": "test",
            "n": len(indices),
            "seed": seed,
            "order": "nested stratified",
            "indices": [int(i) for i in indices],
            "indices_sha1": hashlib.sha1(np.sort(indices).astype(np.int64).tobytes()).hexdigest()[:16],
        },
        "surrogate_run": _relative(surrogate_run) if surrogate_run is not None else None,
        "surrogates": sur_meta,
        "target": f"exported file {onnx_path}" if onnx_path is not None else f"PyTorch model of the run ({target})",
        "output": _relative(path),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "tinyrobust": __version__,
            "torch": torch.__version__,
            "art": importlib.metadata.version("adversarial-robustness-toolbox"),
            "torchattacks": _version("torchattacks"),
        },
    }
    results = {"schema": SCHEMA, "meta": meta, **results}
    atomic_write_json(path, results)
    return results


def _load_prior(path, *, model_sha, dataset, domain, indices, target):
    """A :class:`.runner.PriorResult` from the result file ``path`` if it attacked the same weights file,
    dataset, domain, target and test images (by index); otherwise a refusal that the result's notes
    explain (``<file>: not reused (<why>)``), like a refusal found during the attack."""
    from .runner import PriorResult

    label = _relative(path)
    try:
        got = json.loads(Path(path).read_text())
    except OSError as e:
        return PriorResult.refusal(label, f"unreadable: {e.strerror or e}")
    except ValueError:
        return PriorResult.refusal(label, "not JSON")
    meta = (got.get("meta") or {}) if isinstance(got, dict) else {}
    for what, ok in (
        ("schema", got.get("schema") == SCHEMA if isinstance(got, dict) else False),
        ("weights file", meta.get("model_sha256") == model_sha),
        ("dataset", meta.get("dataset") == dataset),
        ("domain", meta.get("domain", "feature") == domain),
        ("target", meta.get("target") == target),
        ("images", (meta.get("subset") or {}).get("indices") == indices),
    ):
        if not ok:
            return PriorResult.refusal(label, f"other {what}")
    return PriorResult(got, label)


def result_is_current(
    path,
    run_dir,
    attacks: list,
    eps: list,
    n: int,
    seed: int,
    params: dict | None = None,
    cascade: bool = False,
    surrogate_runs: dict | None = None,
    domain: str = "feature",
    **_ignored,
) -> bool:
    """Whether the result file at ``path`` (``robustness.json`` or the ONNX one) is what ``attack_run`` with
    these arguments would write: the same weights file (sha256), attacks in the same order, budgets,
    images (n, seed), cascade, surrogate weights, domain and attack parameters. ``reproduce`` then keeps it
    instead of attacking again, as on a fresh clone of committed results, whose resume parts are not
    committed. Extra keyword arguments of an ``attack_run`` call (progress, out, data_dir) do not matter."""
    try:
        got = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(got, dict) or got.get("schema") != SCHEMA or got.get("skipped"):
        return False
    meta = got.get("meta") or {}
    recorded = got.get("attacks") or {}
    same = (
        meta.get("model_sha256") == file_sha256(Path(run_dir) / WEIGHTS_FILE)
        and got.get("attack_order") == list(attacks)
        and sorted(float(e) for e in got.get("eps") or []) == sorted(float(e) for e in eps)
        and got.get("n") == n
        and got.get("seed") == seed
        and bool(got.get("cascade")) == bool(cascade)
        and meta.get("domain", "feature") == domain
    )
    for key, sdir in (surrogate_runs or {}).items():
        if f"{TRANSFER_PREFIX}{key}" in attacks:
            have = ((meta.get("surrogates") or {}).get(key) or {}).get("sha256")
            same = same and have == file_sha256(Path(sdir) / WEIGHTS_FILE)
    for name, wanted in (params or {}).items():
        if name == "masking":
            have = (got.get("masking_probes") or {}).get("config") or {}
        else:
            have = (recorded.get(name) or {}).get("params") or {}
        same = same and all(have.get(k) == v for k, v in (wanted or {}).items())
    return bool(same)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _fmt(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_table(results: dict) -> str:
    """Clean accuracy, the attack x eps grid of robust accuracy (%), the per-image worst case with its
    Wilson 95% interval, skipped attacks (n/a), then the masking verdicts."""
    eps = results["eps"]
    keys = [f"{e:g}" for e in eps]
    meta = results.get("meta", {})
    cascade = results.get("cascade")
    lines = []
    if meta:
        lines.append(f"{meta.get('model')} on {meta.get('dataset')} ({meta.get('threat_model')})")
    lines.append(
        f"clean accuracy {_fmt(results['clean_accuracy'])}% (n={results['n']}, seed {results['seed']}"
        + (f", EOT {results['eot_samples']} samples" if results.get("stochastic") else "")
        + ")"
    )
    w = max([20] + [len(a) + 2 for a in (*results["attacks"], *(results.get("skipped") or {}))])
    head = (
        f"{'attack':<{w}}{'family':<9}"
        + "".join(f"{k + '/255':>9}" for k in keys)
        + f"{'queries/img':>13}{'time s':>9}"
    )
    title = "robust accuracy (%) at L-inf eps"
    if cascade:
        title += (
            " (cascade: each attack on the survivors of the ones above, leading white-box attacks on all;"
            " a row is the accuracy after it)"
        )
    lines += [title, head, "-" * len(head)]
    footnotes = []
    for name, a in results["attacks"].items():
        accs = "".join(f"{_fmt(a['results'][k]['robust_accuracy']):>9}" for k in keys)
        if "unbounded" in a:
            u = a["unbounded"]
            q, t = u.get("queries_per_image"), u["wall_time_s"]
            label = name + "*"
            l2 = "-" if u["l2_median"] is None else f"{u['l2_median']:.1f}/255"
            footnotes.append(
                f"  {name}: {_fmt(u['accuracy_after_attack'])}% accuracy after the unbounded attack, "
                f"median L2 of successes {l2}"
            )
        else:
            per = [a["results"][k].get("queries_per_image") for k in keys]
            per = [v for v in per if v is not None]
            q = float(np.mean(per)) if per else None
            t, label = sum(a["results"][k].get("wall_time_s", 0.0) for k in keys), name
        qs = "-" if q is None else f"{q:.0f}"
        lines.append(f"{label:<{w}}{a['family']:<9}{accs}{qs:>13}{t:>9.1f}")
    for name, reason in (results.get("skipped") or {}).items():
        lines.append(f"{name:<{w}}{'':<9}" + "".join(f"{'n/a':>9}" for _ in keys) + f"   skipped: {reason}")
    worst = results.get("worst_case") or {}
    if worst:
        lines.append(
            f"{'worst case':<{w + 9}}"
            + "".join(f"{_fmt(worst[k]['robust_accuracy']) if k in worst else '-':>9}" for k in keys)
        )
        if all("ci95" in worst.get(k, {}) for k in keys):
            cis = [worst[k]["ci95"] for k in keys]
            lines.append(
                f"{'  95% CI (Wilson)':<{w + 9}}" + "".join(f"{f'{100 * lo:.0f}-{100 * hi:.0f}':>9}" for lo, hi in cis)
            )
    winner = results.get("white_box_winner") or {}
    if winner:
        lines.append(
            "strongest white-box attack: " + ", ".join(f"{k}/255 {winner[k]['attack']}" for k in keys if k in winner)
        )
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
        lines += [
            f"{name:<12} {spec.family}  {spec.describe()}",
            f"{'':<12} implementation: {spec.source}; defaults: {defaults}",
        ]
    probes = ", ".join(f"{k}={v}" for k, v in PROBE_DEFAULTS.items())
    lines += [
        f"{'transfer@KEY':<12} one transfer entry per surrogate run (attack_run(surrogate_runs={{KEY: RUN}}))",
        f"{'masking':<12} gradient-masking probes (extra PGD runs) and checks, defaults: {probes}",
        f"{'':<12} checks: {', '.join(CHECKS)} (select with --set masking.checks=NAME,NAME)",
        "families: white, black, ensemble, all; override a default with --set ATTACK.KEY=VALUE",
    ]
    return "\n".join(lines)
