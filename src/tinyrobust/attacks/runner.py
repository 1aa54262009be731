"""Run a list of attacks at a list of L-inf budgets and return JSON-able robustness numbers.

Only clean-correct images are attacked (the others already count as errors). Every
(attack, eps) pair is an independent, seeded run: robust accuracy is *not* forced to be
monotone in eps, so a rise with eps stays visible to the gradient-masking checks.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..errors import AttackError
from ..io_utils import atomic_write_json
from . import masking
from .registry import AttackSpec, get_attack
from .target import Target

EPS_UNITS = "pixel/255"
NORM_UNITS = "pixel/255: L-inf and L2 norms of (x_adv - x) in [0, 1] input space, times 255"
MIN_NORM_SLACK = 1e-6  # in [0, 1] units


def validate_eps(eps) -> list[float]:
    """Sorted unique budgets in pixel units /255; each must be in (0, 255]."""
    try:
        values = [float(e) for e in eps]
    except (TypeError, ValueError):
        raise AttackError(f"epsilon must be numbers in (0, 255] in pixel units /255; got {eps!r}") from None
    if not values:
        raise AttackError("no epsilon given; pass e.g. --eps 1,2,4,8 (pixel units /255)")
    for e in values:
        if not 0 < e <= 255:  # also rejects NaN
            raise AttackError(f"epsilon must be in (0, 255] in pixel units /255; got {e:g}")
    return sorted(set(values))


def eps_key(e: float) -> str:
    return f"{e:g}"


def _coerce(value: Any, default: Any, where: str) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            if isinstance(value, bool):
                return value
            raise ValueError
        if isinstance(default, int):
            f = float(value)
            if not f.is_integer():
                raise ValueError
            return int(f)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise AttackError(f"{where} must be of type {type(default).__name__}; got {value!r}") from None
    return value


def resolve_params(names: list[str], params: dict | None) -> dict[str, dict]:
    """Defaults of each attack (and of the masking probes) updated by ``params``; unknown keys fail."""
    params = params or {}
    known = list(names) + ["masking"]
    for name in params:
        if name not in known:
            raise AttackError(f"--set given for {name!r}, which is not being run; attacks run: {', '.join(known)}")
    resolved = {}
    for name in known:
        defaults = masking.PROBE_DEFAULTS if name == "masking" else get_attack(name).defaults
        merged = dict(defaults)
        for key, value in (params.get(name) or {}).items():
            if key not in defaults:
                valid = ", ".join(defaults) or "(none: it has no parameters)"
                raise AttackError(f"unknown parameter {name}.{key}; valid: {valid}")
            merged[key] = _coerce(value, defaults[key], f"{name}.{key}")
        resolved[name] = merged
    return resolved


def _seed(seed: int, *tags: Any) -> None:
    """Seed every RNG an attack may use, from the run seed and the job (reproducible per job)."""
    s = zlib.crc32(":".join(map(str, (seed, *tags))).encode())
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _check_inputs(x: np.ndarray, y: np.ndarray) -> None:
    if not (isinstance(x, np.ndarray) and x.ndim == 4 and np.issubdtype(x.dtype, np.floating)):
        raise AttackError(f"x must be a float32 NCHW numpy array; got {getattr(x, 'dtype', type(x))} "
                          f"of shape {getattr(x, 'shape', None)}")
    if len(x) == 0:
        raise AttackError("no images to attack")
    if x.min() < 0 or x.max() > 1:
        raise AttackError(f"x must be in [0, 1] pixel space; got values in [{x.min():g}, {x.max():g}]")
    if np.ndim(y) != 1 or len(y) != len(x):
        raise AttackError(f"y must hold one integer label per image; got shape {np.shape(y)} for {len(x)} images")


def _norms(x: np.ndarray, x_adv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = (x_adv - x).reshape(len(x), int(np.prod(x.shape[1:]))).astype(np.float64)
    return np.abs(d).max(1, initial=0.0), np.linalg.norm(d, axis=1)


def _stats(n: int, n_correct: int, broken: np.ndarray, linf: np.ndarray, l2: np.ndarray) -> dict:
    """Accuracy numbers plus norms (pixel/255) over the successful adversarial examples."""
    out = {
        "robust_accuracy": (n_correct - int(broken.sum())) / n,
        "attack_success_rate": float(broken.mean()) if n_correct else None,
        "n_broken": int(broken.sum()),
    }
    for name, v in (("linf", linf[broken] * 255), ("l2", l2[broken] * 255)):
        out[f"{name}_mean"] = float(v.mean()) if len(v) else None
        out[f"{name}_median"] = float(np.median(v)) if len(v) else None
    return out


def _generate(spec: AttackSpec, attacker: Target, target: Target, x: np.ndarray, y: np.ndarray,
              eps: float | None, params: dict) -> tuple[np.ndarray, int, float]:
    """Adversarials (projected onto the threat model), target queries used, seconds."""
    if len(x) == 0:  # nothing was classified correctly: nothing to attack
        return x.copy(), 0, 0.0
    try:
        attack = spec.build(attacker, eps, params)
    except ValueError as exc:  # ART rejects parameter values with ValueError
        raise AttackError(f"attack {spec.name}: invalid parameters {params}: {exc}") from None
    target.queries = 0
    t0 = time.perf_counter()
    x_adv = np.asarray(attack.generate(x, y), dtype=np.float32)
    seconds = time.perf_counter() - t0
    x_adv = np.clip(x_adv, x - eps, x + eps) if eps is not None else x_adv
    queries = len(x) if spec.needs_surrogate else target.queries
    return np.clip(x_adv, 0.0, 1.0), queries, seconds


def _query_stats(spec: AttackSpec, queries: int, n_attacked: int) -> dict:
    if spec.family != "black":
        return {}
    return {"queries": queries, "queries_per_image": queries / n_attacked if n_attacked else None}


def run_attacks(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, attacks: list[str], eps: list[float], *,
                seed: int = 0, surrogate: torch.nn.Module | None = None, params: dict | None = None,
                eot_samples: int = 1, batch_size: int = 128, progress: bool = True,
                masking_checks: bool = True, resume_dir: str | Path | None = None) -> dict:
    """Attack ``model`` on ``x`` (float32 NCHW in [0, 1]) / ``y`` (int labels).

    ``eps`` is in pixel units /255. ``params`` overrides defaults per attack, e.g.
    ``{"pgd": {"steps": 50}, "masking": {"large_eps": 128}}``. With ``model.stochastic`` set,
    gradients are averaged over ``eot_samples`` passes (EOT). ``masking_checks`` runs the extra
    PGD probes and the gradient-masking checks of :mod:`.masking`. With ``resume_dir``, each
    finished attack (and the probes) is saved there and reused by a later call with the same images,
    budgets, seed and parameters, so a killed evaluation does not redo finished attacks.
    """
    t_start = time.perf_counter()
    specs = [get_attack(a) for a in dict.fromkeys(attacks)]
    if not specs:
        raise AttackError("no attack given")
    budgets = validate_eps(eps)
    if batch_size < 1:
        raise AttackError(f"batch size must be >= 1; got {batch_size}")
    resolved = resolve_params([s.name for s in specs], params)
    _check_inputs(x, y)
    x, y = x.astype(np.float32, copy=False), np.asarray(y, dtype=np.int64)
    if any(s.needs_surrogate for s in specs):
        if surrogate is None:
            raise AttackError("the transfer attack needs a surrogate: pass --surrogate RUN_DIR, a separately "
                              "trained (float) run on the same dataset; crafting on the target would be white-box")
        if surrogate is model:
            raise AttackError("the transfer surrogate must be a different model than the target")

    stochastic = bool(getattr(model, "stochastic", False))
    eot = max(1, int(eot_samples)) if stochastic else 1
    target = Target(model, x.shape[1:], eot_samples=eot, batch_size=batch_size)
    surrogate_target = None
    if surrogate is not None and any(s.needs_surrogate for s in specs):
        surrogate_target = Target(surrogate, x.shape[1:], batch_size=batch_size)
        if surrogate_target.num_classes != target.num_classes:
            raise AttackError(f"the surrogate has {surrogate_target.num_classes} classes, the target "
                              f"{target.num_classes}: train it on the same dataset")

    n = len(x)
    correct = target.predict(x) == y
    xs, ys = x[correct], y[correct]
    n_correct = int(correct.sum())
    results: dict[str, Any] = {
        "n": n, "clean_accuracy": n_correct / n, "n_clean_correct": n_correct,
        "eps": budgets, "eps_units": EPS_UNITS, "norm_units": NORM_UNITS, "seed": seed,
        "stochastic": stochastic, "eot_samples": eot, "attacks": {}, "notes": [],
    }
    if stochastic and eot == 1:
        results["notes"].append("model is stochastic but eot_samples=1: gradients are single-sample (weak)")

    probe_cfg = resolved["masking"]
    if masking_checks:
        validate_eps([probe_cfg["large_eps"], probe_cfg["steps_eps"]])
    jobs = sum(len(budgets) if s.uses_eps else 1 for s in specs) + (2 if masking_checks else 0)
    bar = tqdm(total=jobs, desc="attacks", file=sys.stderr, disable=not progress, unit="run")
    robust_masks: dict[str, dict[str, np.ndarray]] = {}  # eps key -> attack -> robust among clean-correct
    store = _ResumeStore(resume_dir, xs, ys, budgets, seed, eot)
    for spec in specs:
        p = resolved[spec.name]
        saved = store.load(spec.name, p)
        if saved is not None:
            results["attacks"][spec.name], masks = saved
            for k, m in masks.items():
                robust_masks.setdefault(k, {})[spec.name] = m
            bar.update(len(budgets) if spec.uses_eps else 1)
            continue
        attacker = surrogate_target if spec.needs_surrogate else target
        entry: dict[str, Any] = {"family": spec.family, "threat_model": spec.describe(p), "norm": spec.norm,
                                 "params": p, "results": {}}
        if spec.uses_eps:
            for e in budgets:
                bar.set_postfix_str(f"{spec.name} eps={e:g}")
                _seed(seed, spec.name, e)
                x_adv, queries, seconds = _generate(spec, attacker, target, xs, ys, e / 255, p)
                broken = target.predict(x_adv) != ys
                stats = _stats(n, n_correct, broken, *_norms(xs, x_adv))
                entry["results"][eps_key(e)] = {**stats, **_query_stats(spec, queries, n_correct),
                                                "wall_time_s": round(seconds, 3)}
                robust_masks.setdefault(eps_key(e), {})[spec.name] = ~broken
                bar.update()
        else:
            bar.set_postfix_str(spec.name)
            _seed(seed, spec.name)
            x_adv, queries, seconds = _generate(spec, attacker, target, xs, ys, None, p)
            success = target.predict(x_adv) != ys
            linf, l2 = _norms(xs, x_adv)
            entry["unbounded"] = {**_stats(n, n_correct, success, linf, l2),
                                  **_query_stats(spec, queries, n_correct), "wall_time_s": round(seconds, 3)}
            entry["unbounded"]["accuracy_after_attack"] = entry["unbounded"].pop("robust_accuracy")
            for e in budgets:
                broken = success & (linf <= e / 255 + MIN_NORM_SLACK)
                entry["results"][eps_key(e)] = _stats(n, n_correct, broken, linf, l2)
                robust_masks.setdefault(eps_key(e), {})[spec.name] = ~broken
            bar.update()
        results["attacks"][spec.name] = entry
        store.save(spec.name, p, entry, {k: m[spec.name] for k, m in robust_masks.items() if spec.name in m})

    # Per image: robust at eps only if it survived every attack (AutoAttack's ensemble rule).
    results["worst_case"] = {
        k: {"robust_accuracy": int(np.logical_and.reduce(list(m.values())).sum()) / n,
            "best_single_attack": min(m, key=lambda a: results["attacks"][a]["results"][k]["robust_accuracy"])}
        for k, m in robust_masks.items()
    }

    if masking_checks:
        probes = store.load("_masking_probes", probe_cfg)
        if probes is None:
            probes = _masking_probes(target, xs, ys, n, probe_cfg, seed, bar)
            store.save("_masking_probes", probe_cfg, probes, {})
        else:
            probes = probes[0]
            bar.update(2)
        results["masking_probes"] = probes
        results["masking_checks"] = masking.check_masking(results)
    bar.close()
    results["wall_time_s"] = round(time.perf_counter() - t_start, 3)
    return results


class _ResumeStore:
    """Finished attacks saved as JSON, keyed by a fingerprint of everything their result depends on."""

    def __init__(self, folder, xs: np.ndarray, ys: np.ndarray, budgets: list[float], seed: int, eot: int):
        self.folder = Path(folder) if folder is not None else None
        digest = hashlib.sha1(np.ascontiguousarray(xs).tobytes())
        digest.update(np.ascontiguousarray(ys).tobytes())
        self.base = {"images_sha1": digest.hexdigest(), "eps": budgets, "seed": seed, "eot": eot}

    def _key(self, params: dict) -> str:
        return json.dumps({**self.base, "params": params}, sort_keys=True, default=str)

    def load(self, name: str, params: dict):
        if self.folder is None or not (self.folder / f"{name}.json").is_file():
            return None
        try:
            saved = json.loads((self.folder / f"{name}.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: redo the attack
        if saved.get("key") != self._key(params):
            return None
        return saved["entry"], {k: np.asarray(v, dtype=bool) for k, v in saved["masks"].items()}

    def save(self, name: str, params: dict, entry: dict, masks: dict) -> None:
        if self.folder is None:
            return
        atomic_write_json(self.folder / f"{name}.json", {
            "key": self._key(params), "entry": entry, "masks": {k: m.tolist() for k, m in masks.items()}})


def _masking_probes(target: Target, xs: np.ndarray, ys: np.ndarray, n: int, cfg: dict, seed: int, bar) -> dict:
    """Extra PGD runs the masking checks need: one at a large eps, and few vs many steps."""
    pgd = get_attack("pgd")

    def accuracy(e: float, steps: int) -> float:
        _seed(seed, "masking", e, steps)
        p = {**pgd.defaults, "steps": steps}
        x_adv, _, _ = _generate(pgd, target, target, xs, ys, e / 255, p)
        return int((target.predict(x_adv) == ys).sum()) / n

    bar.set_postfix_str(f"masking probe pgd eps={cfg['large_eps']:g}")
    large = {"eps": cfg["large_eps"], "steps": cfg["few_steps"],
             "robust_accuracy": accuracy(cfg["large_eps"], cfg["few_steps"])}
    bar.update()
    bar.set_postfix_str(f"masking probe pgd steps {cfg['few_steps']} vs {cfg['many_steps']}")
    steps = {"eps": cfg["steps_eps"],
             "few_steps": {"steps": cfg["few_steps"], "robust_accuracy": accuracy(cfg["steps_eps"], cfg["few_steps"])},
             "many_steps": {"steps": cfg["many_steps"],
                            "robust_accuracy": accuracy(cfg["steps_eps"], cfg["many_steps"])}}
    bar.update()
    return {"config": cfg, "large_eps": large, "more_steps": steps}
