"""Run a list of attacks at a list of L-inf budgets and return JSON-able robustness numbers.

Only clean-correct images are attacked (the others already count as errors). Every
(attack, eps) pair is an independent, seeded run: robust accuracy is *not* forced to be
monotone in eps, so a rise with eps stays visible to the gradient-masking checks. Per image
and eps every attack records '1' survived / '0' broken or clean-wrong / '.' not attacked
(broken earlier in the cascade); the worst case is the per-image AND over the attacks.
"""

from __future__ import annotations

import copy
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

from ..config import check_like
from ..errors import AttackError
from ..io_utils import atomic_write_json
from . import masking
from .registry import TRANSFER_PREFIX, AttackSpec, get_attack, split_transfer
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


def resolve_params(names: list[str], params: dict | None) -> dict[str, dict]:
    """Defaults of each attack (and of the masking probes) updated by ``params``; unknown keys fail."""
    params = params or {}
    known = list(names) + ["masking"]
    params = {split_transfer(k)[0]: v for k, v in params.items()}
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
            merged[key] = check_like(f"{name}.{key}", value, defaults[key], AttackError)
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
        raise AttackError(
            f"x must be a float32 NCHW numpy array; got {getattr(x, 'dtype', type(x))} "
            f"of shape {getattr(x, 'shape', None)}"
        )
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


def _generate(
    spec: AttackSpec, attacker: Target, target: Target, x: np.ndarray, y: np.ndarray, eps: float | None, params: dict
) -> tuple[np.ndarray, int, float, np.ndarray | None]:
    """Adversarials (projected onto the threat model), target queries used, seconds, and an ensemble's
    per-image stage letters (standard AutoAttack: which stage broke each image, for the masking check)."""
    if len(x) == 0:  # nothing left to attack
        return x.copy(), 0, 0.0, (np.empty(0, "<U1") if spec.family == "ensemble" else None)
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
    return np.clip(x_adv, 0.0, 1.0), queries, seconds, getattr(attack, "stage_of", None)


def _query_stats(spec: AttackSpec, queries: int, n_attacked: int) -> dict:
    if spec.family == "white":
        return {}
    return {"queries": queries, "queries_per_image": queries / n_attacked if n_attacked else None}


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): changes whenever a weight does."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def outcome_string(robust: np.ndarray, attacked: np.ndarray) -> str:
    """Per image: '1' survived, '0' broken (or clean-wrong), '.' not attacked (broken earlier)."""
    return "".join("1" if r else ("0" if a else ".") for r, a in zip(robust, attacked))


def _wilson(k: int, n: int) -> list[float]:
    from ..stats import wilson

    return [round(v, 6) for v in wilson(k, n)]


def _resolve_transfers(names: list[str], surrogate, surrogates: dict | None) -> tuple[list[str], dict]:
    """Attack names with ``transfer`` expanded to ``transfer@KEY`` per surrogate; {key: module}."""
    pool = dict(surrogates or {})
    if surrogate is not None:
        pool.setdefault("transfer", surrogate)
    out: list[str] = []
    for name in names:
        base, key = split_transfer(name)
        if base != "transfer":
            out.append(name)
        elif key is not None:
            if key not in pool:
                raise AttackError(
                    f"attack {name!r} needs a surrogate named {key!r}; surrogates given: {', '.join(pool) or 'none'}"
                )
            out.append(name)
        elif surrogate is not None:
            out.append("transfer")
        elif pool:
            out += [f"{TRANSFER_PREFIX}{k}" for k in pool]
        else:
            raise AttackError(
                "the transfer attack needs a surrogate: pass --surrogate RUN_DIR, a separately "
                "trained (float) run on the same dataset; crafting on the target would be white-box"
            )
    # Transfers last: a model cannot face a transfer from itself, so the common attack set of
    # several models is a prefix of the cascade (OWNERS.md item 3).
    is_transfer = [split_transfer(a)[0] == "transfer" for a in out]
    out = [a for a, t in zip(out, is_transfer) if not t] + [a for a, t in zip(out, is_transfer) if t]
    return list(dict.fromkeys(out)), pool


def _surrogate_key(name: str) -> str:
    return split_transfer(name)[1] or "transfer"


def run_attacks(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    attacks: list[str],
    eps: list[float],
    *,
    seed: int = 0,
    surrogate: torch.nn.Module | None = None,
    surrogates: dict[str, torch.nn.Module] | None = None,
    params: dict | None = None,
    eot_samples: int | None = 1,
    batch_size: int = 128,
    progress: bool = True,
    masking_checks: bool = True,
    resume_dir: str | Path | None = None,
    cascade: bool = False,
    white_box_in_full: bool = True,
    skipped: dict[str, str] | None = None,
    model_id: str | None = None,
    prior: PriorResult | None = None,
) -> dict:
    """Attack ``model`` on ``x`` (float32 NCHW in [0, 1]) / ``y`` (int labels).

    ``eps`` is in pixel units /255. ``params`` overrides defaults per attack, e.g.
    ``{"pgd": {"steps": 50}, "masking": {"large_eps": 128}}``. Randomness is measured (same input
    twice); a random (or ``stochastic``-declared) model gets gradients averaged over ``eot_samples``
    passes (EOT; ``None``: 8). ``surrogates`` ``{key: model}`` gives one ``transfer@KEY`` entry each
    (``surrogate`` is the single-surrogate shorthand, entry ``transfer``); a surrogate with the
    target's weights is skipped and recorded in ``skipped`` (which the caller may pre-fill with
    ``{attack: reason}`` for attacks it already knows cannot run).

    ``cascade=False``: every attack runs on all clean-correct images. ``cascade=True`` (AutoAttack's
    rule): per eps, each attack runs only on the images every earlier attack left correct; the
    minimum-norm attacks (run once, unbounded) run on the images that survived the earlier attacks at
    one eps or more and are scored at each eps on that eps's survivors. Transfers run last. With
    ``white_box_in_full`` (default) the white-box attacks at the head of the order each run on all
    clean-correct images (so ``white_box_winner`` compares them on the same images, and the per-image
    masking check sees every white-box break); the cascade starts after them. ``model_id`` (e.g. the
    sha256 of the exported file an ONNX target runs) joins the resume key next to the weights' hash.

    ``masking_checks`` runs the probes and checks of :mod:`.masking`. With ``resume_dir``, each
    finished attack is saved and reused by a later call with the same images, budgets, seed,
    parameters, model weights, surrogate weights and (under cascade) the same survivors.

    ``prior`` (:class:`PriorResult`): an earlier result of this model on these images, e.g. at more eps;
    each (attack, eps) unit it provably shares with this call is taken from it instead of attacked again.
    """
    t_start = time.perf_counter()
    if not list(attacks):
        raise AttackError("no attack given")
    for a in attacks:
        get_attack(a)
    pre_skipped = dict(skipped or {})
    names, pool = _resolve_transfers([a for a in dict.fromkeys(attacks) if a not in pre_skipped], surrogate, surrogates)
    specs = {a: get_attack(a) for a in names}
    budgets = validate_eps(eps)
    if batch_size < 1:
        raise AttackError(f"batch size must be >= 1; got {batch_size}")
    resolved = resolve_params(list(dict.fromkeys(s.name for s in specs.values())), params)
    check_names = masking.resolve_checks(resolved["masking"]["checks"])
    _check_inputs(x, y)
    x, y = x.astype(np.float32, copy=False), np.asarray(y, dtype=np.int64)

    model_sha = weights_sha256(model)
    random_outputs = masking.measure_randomness(model, x[:32])
    stochastic = bool(getattr(model, "stochastic", False)) or random_outputs
    eot = (max(1, int(eot_samples)) if eot_samples is not None else 8) if stochastic else 1
    target = Target(model, x.shape[1:], eot_samples=eot, batch_size=batch_size)

    skipped = pre_skipped
    sur_targets: dict[str, Target] = {}
    sur_sha: dict[str, str] = {}
    for a in names:
        if specs[a].needs_surrogate:
            key = _surrogate_key(a)
            module = pool[key]
            sha = weights_sha256(module)
            if module is model or sha == model_sha:
                skipped[a] = (
                    f"surrogate {key!r} has the target's own weights (sha256 {sha[:12]}): a transfer "
                    "from itself would be a white-box attack"
                )
                continue
            t = Target(module, x.shape[1:], batch_size=batch_size)
            if t.num_classes != target.num_classes:
                raise AttackError(
                    f"the surrogate {key!r} has {t.num_classes} classes, the target "
                    f"{target.num_classes}: train it on the same dataset"
                )
            sur_targets[a], sur_sha[key] = t, sha
    run_names = [a for a in names if a not in skipped]

    n = len(x)
    correct = target.predict(x) == y
    n_correct = int(correct.sum())
    results: dict[str, Any] = {
        "n": n,
        "clean_accuracy": n_correct / n,
        "n_clean_correct": n_correct,
        "clean_correct": "".join("1" if c else "0" for c in correct),
        "eps": budgets,
        "eps_units": EPS_UNITS,
        "norm_units": NORM_UNITS,
        "seed": seed,
        "stochastic": stochastic,
        "randomness_measured": random_outputs,
        "eot_samples": eot,
        "model_sha256_weights": model_sha,
        "surrogate_sha256_weights": sur_sha,
        "cascade": run_names if cascade else None,
        "attack_order": run_names,
        "skipped": skipped,
        "white_box_in_full": bool(cascade and white_box_in_full),
        "attacks": {},
        "notes": [],
    }
    if stochastic and eot == 1:
        results["notes"].append("model is stochastic but eot_samples=1: gradients are single-sample (weak)")
    if random_outputs and not getattr(model, "stochastic", False):
        results["notes"].append(f"model outputs differ for the same input (measured): attacked with EOT {eot}")

    probe_cfg = resolved["masking"]
    if masking_checks:
        validate_eps([probe_cfg["large_eps"], *masking.steps_eps_candidates(probe_cfg, budgets)])
    jobs = sum(len(budgets) if specs[a].uses_eps else 1 for a in run_names) + (2 if masking_checks else 0)
    bar = tqdm(total=jobs, desc="attacks", file=sys.stderr, disable=not progress, unit="run")
    # alive[eps]: clean-correct images no earlier attack broke at eps (all clean-correct without cascade).
    alive = {eps_key(e): correct.copy() for e in budgets}
    everything = {k: v.copy() for k, v in alive.items()}
    lead_white = set()
    for name in run_names:  # the white-box attacks at the head of the order
        if specs[name].family != "white":
            break
        lead_white.add(name)
    if not (cascade and white_box_in_full):
        lead_white = set()
    robust: dict[str, dict[str, np.ndarray]] = {}  # eps key -> attack -> survived (False where not attacked)
    store = _ResumeStore(
        resume_dir, x, y, budgets, seed, eot, model_sha if model_id is None else f"{model_sha}:{model_id}"
    )
    if prior is not None and not prior.matches(model_sha, seed, eot, results["clean_correct"], stochastic):
        results["notes"].append(f"{prior.label}: not reused ({prior.why_not})")
        prior = None
    for name in run_names:
        spec, p = specs[name], resolved[specs[name].name]
        extra = {"attack": name, "cascade": cascade}
        if spec.needs_surrogate:
            extra["surrogate_sha256"] = sur_sha[_surrogate_key(name)]
        candidates = everything if name in lead_white else alive
        if cascade:
            extra["alive_sha1"] = hashlib.sha1(
                "".join("".join("1" if v else "0" for v in candidates[k]) for k in sorted(candidates)).encode()
            ).hexdigest()
        saved = store.load(name, p, extra)
        if saved is not None:
            entry, masks = saved
        else:
            entry, masks = _run_one(
                name,
                spec,
                p,
                target,
                sur_targets.get(name, target),
                x,
                y,
                budgets,
                candidates,
                correct,
                seed,
                bar,
                parts=(store, extra),
                prior=prior,
                surrogate_sha=sur_sha.get(_surrogate_key(name)) if spec.needs_surrogate else None,
            )
            store.save(name, p, extra, entry, masks)
        bar.update(0 if saved is None else (len(budgets) if spec.uses_eps else 1))
        if spec.needs_surrogate:
            entry["surrogate"] = _surrogate_key(name)
            entry["surrogate_sha256_weights"] = sur_sha[_surrogate_key(name)]
        results["attacks"][name] = entry
        for k, m in masks.items():
            robust.setdefault(k, {})[name] = m
            if cascade:
                alive[k] = alive[k] & m

    results["worst_case"] = _worst_case(results, robust, correct, budgets)
    results["white_box_winner"] = _white_box_winner(results, budgets, n_correct)

    if masking_checks:
        probes = store.load("_masking_probes", probe_cfg, {"budgets": budgets})
        if probes is None and prior is not None and (from_prior := prior.masking_probes(probe_cfg, budgets)):
            probes = (from_prior, {})
        if probes is None:
            t_probes = time.perf_counter()
            probes = _masking_probes(target, x[correct], y[correct], n, probe_cfg, seed, bar, budgets)
            probes["wall_time_s"] = round(time.perf_counter() - t_probes, 3)  # counted in the stage's cost
            store.save("_masking_probes", probe_cfg, {"budgets": budgets}, probes, {})
        else:
            probes = probes[0]
            bar.update(2)
        probes["randomness"] = {"random_outputs": random_outputs, "images": int(min(32, n))}
        probes.update(masking.gradient_probes(target, x[correct], y[correct], int(probe_cfg["gradient_images"])))
        results["masking_probes"] = probes
    if prior is not None and prior.taken:
        results["reused"] = {"from": prior.label, "units": prior.taken, "source_masking": prior.masking_summary()}
        results["notes"].append(
            f"{len(prior.taken)} unit(s) taken from {prior.label} instead of attacked again (same weights, "
            "images, seed, parameters, surrogates and attacked images; each unit is seeded on its own): see 'reused'"
        )
    if masking_checks:
        results["masking_checks"] = masking.check_masking(results, checks=check_names)
    bar.close()
    # wall_time_s: this call only (a call that reuses finished parts costs seconds); attack_seconds: what
    # every attack and probe cost when it ran, summed over the sessions and processes that ran them
    results["wall_time_s"] = round(time.perf_counter() - t_start, 3)
    results["attack_seconds"] = round(_attack_seconds(results), 3)
    return results


def _attack_seconds(results: dict[str, Any]) -> float:
    """Seconds recorded by every attack entry (each eps, or the unbounded run) and the masking probes."""
    total = 0.0
    for entry in results.get("attacks", {}).values():
        if "unbounded" in entry:
            total += float(entry["unbounded"].get("wall_time_s") or 0.0)
        total += sum(float(r.get("wall_time_s") or 0.0) for r in (entry.get("results") or {}).values())
    return total + float((results.get("masking_probes") or {}).get("wall_time_s") or 0.0)


def _run_one(
    name: str,
    spec: AttackSpec,
    p: dict,
    target: Target,
    attacker: Target,
    x: np.ndarray,
    y: np.ndarray,
    budgets: list[float],
    alive: dict[str, np.ndarray],
    correct: np.ndarray,
    seed: int,
    bar,
    parts: tuple | None = None,
    prior: PriorResult | None = None,
    surrogate_sha: str | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """One attack at every eps on the images ``alive`` at that eps; entry and survived masks (length n).

    With ``parts = (store, key extra)`` each eps of an eps-bounded attack is also saved on its own as soon
    as it finishes (and reused), so a run killed inside a long attack (standard AutoAttack at four eps is
    an hour on one CPU core) loses at most the eps in progress."""
    entry: dict[str, Any] = {
        "family": spec.family,
        "threat_model": spec.describe(p),
        "norm": spec.norm,
        "params": p,
        "results": {},
    }
    masks: dict[str, np.ndarray] = {}
    n = len(x)

    def record(
        k: str, attacked: np.ndarray, broken_at: np.ndarray, linf: np.ndarray, l2: np.ndarray, extra: dict
    ) -> None:
        # attacked, broken_at, linf, l2: length n (norms in [0, 1] units, inf where not attacked)
        survived, broken = attacked & ~broken_at, attacked & broken_at
        entry["results"][k] = {
            "robust_accuracy": int(survived.sum()) / n,
            "n_attacked": int(attacked.sum()),
            "n_broken": int(broken.sum()),
            "attack_success_rate": float(broken.sum() / attacked.sum()) if attacked.any() else None,
            **{
                f"{nm}_{st}": (float(fn(v[broken] * 255)) if broken.any() else None)
                for nm, v in (("linf", linf), ("l2", l2))
                for st, fn in (("mean", np.mean), ("median", np.median))
            },
            "robust": outcome_string(survived, attacked | ~correct),
            **extra,
        }
        masks[k] = survived

    if spec.uses_eps:
        for e in budgets:
            k = eps_key(e)
            idx = np.flatnonzero(alive[k])
            part_extra = None
            if parts is not None:
                store, extra = parts
                part_extra = {
                    **{a: b for a, b in extra.items() if a != "alive_sha1"},
                    "eps_part": k,
                    "alive_at_eps_sha1": hashlib.sha1(np.packbits(alive[k]).tobytes()).hexdigest(),
                }
                saved = store.load(f"{name}@eps{k}", p, part_extra, per_eps=True)
                if saved is not None:
                    entry["results"][k], masks[k] = saved[0], saved[1]["mask"]
                    bar.update()
                    continue
            taken = prior.unit(name, p, k, alive[k], correct, surrogate_sha) if prior is not None else None
            if taken is not None:  # not saved as a part: taken again next time, so 'reused' always says so
                entry["results"][k], masks[k] = taken
                bar.update()
                continue
            bar.set_postfix_str(f"{name} eps={e:g}")
            _seed(seed, name if name != "transfer" else spec.name, e)
            x_adv, queries, seconds, stages = _generate(spec, attacker, target, x[idx], y[idx], e / 255, p)
            broken_at = np.zeros(n, bool)
            if len(idx):
                broken_at[idx] = target.predict(x_adv) != y[idx]
            attacked = np.zeros(n, bool)
            attacked[idx] = True
            linf, l2 = np.full(n, np.inf), np.full(n, np.inf)
            linf[idx], l2[idx] = _norms(x[idx], x_adv)
            extra = {**_query_stats(spec, queries, len(idx)), "wall_time_s": round(seconds, 3)}
            if stages is not None and len(stages) == len(idx):  # which stage broke each image ('-': none)
                per_image = np.full(n, "-", dtype="<U1")
                per_image[idx] = np.where(stages == "", "-", stages)
                extra["stages"] = "".join(per_image)
            record(k, attacked, broken_at, linf, l2, extra)
            if part_extra is not None:
                parts[0].save(f"{name}@eps{k}", p, part_extra, entry["results"][k], {"mask": masks[k]}, per_eps=True)
            bar.update()
    else:
        bar.set_postfix_str(name)
        _seed(seed, name)
        union = np.logical_or.reduce([alive[eps_key(e)] for e in budgets])
        idx = np.flatnonzero(union)
        x_adv, queries, seconds, _ = _generate(spec, attacker, target, x[idx], y[idx], None, p)
        success = np.zeros(n, bool)
        linf_all, l2_all = np.full(n, np.inf), np.full(n, np.inf)
        if len(idx):
            success[idx] = target.predict(x_adv) != y[idx]
            linf_all[idx], l2_all[idx] = _norms(x[idx], x_adv)
        un = _stats(n, len(idx), success[idx], linf_all[idx], l2_all[idx])
        entry["unbounded"] = {
            **un,
            **_query_stats(spec, queries, len(idx)),
            "n_attacked": len(idx),
            "wall_time_s": round(seconds, 3),
        }
        entry["unbounded"]["accuracy_after_attack"] = (len(idx) - int(success[idx].sum())) / n
        entry["unbounded"].pop("robust_accuracy")
        for e in budgets:
            k = eps_key(e)
            attacked = alive[k].copy()
            broken_at = success & (linf_all <= e / 255 + MIN_NORM_SLACK)
            record(k, attacked, broken_at, linf_all, l2_all, {})
        bar.update()
    return entry, masks


def _worst_case(results: dict, robust: dict, correct: np.ndarray, budgets: list[float]) -> dict:
    """Per eps, robust only if it survived every attack that ran (AutoAttack's ensemble rule)."""
    n, out = len(correct), {}
    for e in budgets:
        k = eps_key(e)
        masks = robust.get(k, {})
        if not masks:
            continue
        survived = np.logical_and.reduce([correct, *masks.values()])
        kk = int(survived.sum())
        out[k] = {
            "robust_accuracy": kk / n,
            "ci95": _wilson(kk, n),
            "n": n,
            "n_robust": kk,
            "robust": "".join("1" if v else "0" for v in survived),
            "attacks": list(masks),
        }
        if not results.get("cascade"):
            out[k]["best_single_attack"] = min(
                masks, key=lambda a: results["attacks"][a]["results"][k]["robust_accuracy"]
            )
    return out


def _white_box_winner(results: dict, budgets: list[float], n_correct: int) -> dict:
    """Per eps, among the white-box attacks that ran on every clean-correct image, the one with the
    lowest robust accuracy (ties: the earlier one) and all their accuracies."""
    out = {}
    for e in budgets:
        k = eps_key(e)
        white = {
            a: en["results"][k]["robust_accuracy"]
            for a, en in results["attacks"].items()
            if en["family"] == "white" and en["results"][k].get("n_attacked") == n_correct
        }
        if white:
            best = min(white, key=white.get)
            out[k] = {"attack": best, "robust_accuracy": white[best], "compared": white}
    return out


def _same_json(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


class PriorResult:
    """An earlier ``run_attacks`` result of the same model on the same images (for example the grid that
    owns a shared run, attacked at more eps), offered to a new call. One (attack, eps) unit is a pure
    function of the weights, the images, the seed (each unit reseeds from seed, attack and eps), the
    attack's parameters, its surrogate's weights and the images it attacks (under cascade: the survivors
    of the earlier attacks at that eps); a unit whose every input is the same is taken instead of
    attacked again. Checked per unit, so a prior with other parameters or another attack order is used
    only where it provably gives the same numbers. (As with resume parts, a change of an attack's code
    without a change of its parameters is not seen.)"""

    def __init__(self, result: dict, label: str, refused: str = ""):
        self.result, self.label = result, label
        self.taken: list[str] = []
        self.why_not = ""
        self.refused = refused

    @classmethod
    def refusal(cls, label: str, why: str) -> "PriorResult":
        """A prior refused before the attack (unreadable file, other dataset, images...): it matches
        nothing, and the result's notes say why, as for a refusal found during the attack."""
        return cls({}, label, refused=why)

    def matches(self, model_sha: str, seed: int, eot: int, clean_correct: str, stochastic: bool) -> bool:
        """Whether the prior attacked the same weights (sha256 of the attacked module), with the same
        seed and EOT, and its clean predictions on the images are ours (a check on the images too)."""
        if self.refused:
            self.why_not = self.refused
            return False
        r = self.result
        for what, ok in (
            ("other weights", r.get("model_sha256_weights") == model_sha),
            ("other seed", r.get("seed") == seed),
            ("other EOT samples", r.get("eot_samples") == eot),
            ("a random model", not stochastic and not r.get("stochastic")),
            ("other images or clean predictions", r.get("clean_correct") == clean_correct),
        ):
            if not ok:
                self.why_not = what
                return False
        return True

    def unit(self, name: str, params: dict, k: str, attacked: np.ndarray, correct: np.ndarray, surrogate_sha):
        """(result entry, survived mask) of attack ``name`` at eps key ``k`` if the prior ran it with the
        same parameters (and surrogate weights) on exactly the images ``attacked``; else None."""
        entry = (self.result.get("attacks") or {}).get(name) or {}
        got = (entry.get("results") or {}).get(k)
        if (
            got is None
            or not _same_json(entry.get("params"), params)
            or entry.get("surrogate_sha256_weights") != surrogate_sha
            or len(got.get("robust") or "") != len(attacked)
        ):
            return None
        s = np.frombuffer(got["robust"].encode(), dtype=np.uint8)
        if not np.array_equal((s != ord(".")) & correct, attacked):
            return None  # other survivors under cascade: another unit
        self.taken.append(f"{name}@{k}")
        return copy.deepcopy(got), s == ord("1")

    def masking_summary(self) -> dict | None:
        """The prior's own masking verdict (its checks ran at its eps, on these weights and images), for
        the ``source_result_checks`` check: a model flagged there stays flagged in a result built from it."""
        mc = self.result.get("masking_checks")
        if not mc:
            return None
        return {
            "passed": mc.get("passed"),
            "eps": self.result.get("eps"),
            "failed": [
                {"check": c.get("check"), "detail": c.get("detail")}
                for c in mc.get("checks") or []
                if c.get("passed") is False
            ],
        }

    def masking_probes(self, cfg: dict, budgets: list[float]):
        """The prior's PGD masking probes if they used the same configuration and probed eps (they are
        seeded per probe); the randomness and gradient probes are measured again by the caller."""
        probes = self.result.get("masking_probes") or {}
        prior_budgets = [float(e) for e in self.result.get("eps") or []]
        if not probes or not _same_json(probes.get("config"), cfg) or not prior_budgets:
            return None
        if masking.steps_eps_candidates(cfg, prior_budgets) != masking.steps_eps_candidates(cfg, budgets):
            return None
        self.taken.append("masking_probes")
        keep = ("config", "large_eps", "more_steps", "wall_time_s")
        return {k: copy.deepcopy(v) for k, v in probes.items() if k in keep}


class _ResumeStore:
    """Finished attacks saved as JSON, keyed by a fingerprint of everything their result depends on:
    images, labels, budgets, seed, EOT, the attacked model's weights (sha256), the attack's parameters
    and, per attack, its surrogate's weights and (under cascade) the images still alive."""

    def __init__(
        self, folder, x: np.ndarray, y: np.ndarray, budgets: list[float], seed: int, eot: int, model_sha256: str
    ):
        self.folder = Path(folder) if folder is not None else None
        digest = hashlib.sha1(np.ascontiguousarray(x).tobytes())
        digest.update(np.ascontiguousarray(y).tobytes())
        self.base = {
            "images_sha1": digest.hexdigest(),
            "eps": budgets,
            "seed": seed,
            "eot": eot,
            "model_sha256": model_sha256,
        }

    def _key(self, params: dict, extra: dict, per_eps: bool = False) -> str:
        # a per-eps part depends on its own eps (in ``extra``) and survivors, not on the other eps of the
        # call: without the eps list in its key, a call for one eps (a ``reproduce --jobs`` work unit) and
        # the call for all of them share it
        base = {k: v for k, v in self.base.items() if not (per_eps and k == "eps")}
        return json.dumps({**base, "params": params, **extra}, sort_keys=True, default=str)

    def _file(self, name: str) -> Path:
        return self.folder / f"{name.replace('@', '_at_')}.json"

    def load(self, name: str, params: dict, extra: dict, per_eps: bool = False):
        if self.folder is None or not self._file(name).is_file():
            return None
        try:
            saved = json.loads(self._file(name).read_text())
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: redo the attack
        # per-eps parts written before their key dropped the eps list still count for the same eps list
        keys = {self._key(params, extra, per_eps)} | ({self._key(params, extra)} if per_eps else set())
        if saved.get("key") not in keys:
            return None  # stale: other weights, images, survivors or parameters
        return saved["entry"], {k: np.asarray(v, dtype=bool) for k, v in saved["masks"].items()}

    def save(self, name: str, params: dict, extra: dict, entry: dict, masks: dict, per_eps: bool = False) -> None:
        if self.folder is None:
            return
        atomic_write_json(
            self._file(name),
            {
                "key": self._key(params, extra, per_eps),
                "entry": entry,
                "masks": {k: m.tolist() for k, m in masks.items()},
            },
        )


def _masking_probes(
    target: Target, xs: np.ndarray, ys: np.ndarray, n: int, cfg: dict, seed: int, bar, budgets: list[float]
) -> dict:
    """Extra PGD runs the masking checks need: one at a large eps, and few vs many steps at the
    largest probed eps where PGD with few steps still leaves >= ``steps_min_accuracy`` (so that more
    steps have something left to break; at an eps where everything is broken the check cannot fail)."""
    pgd = get_attack("pgd")

    def accuracy(e: float, steps: int) -> float:
        _seed(seed, "masking", e, steps)
        p = {**pgd.defaults, "steps": steps}
        x_adv, _, _, _ = _generate(pgd, target, target, xs, ys, e / 255, p)
        return int((target.predict(x_adv) == ys).sum()) / n if len(xs) else 0.0

    bar.set_postfix_str(f"masking probe pgd eps={cfg['large_eps']:g}")
    large = {
        "eps": cfg["large_eps"],
        "steps": cfg["few_steps"],
        "robust_accuracy": accuracy(cfg["large_eps"], cfg["few_steps"]),
    }
    bar.update()
    candidates = masking.steps_eps_candidates(cfg, budgets)
    scan = {}
    chosen = candidates[0]
    for e in candidates:  # ascending: stop at the first eps below the threshold
        bar.set_postfix_str(f"masking probe pgd-{cfg['few_steps']} eps={e:g}")
        scan[eps_key(e)] = accuracy(e, cfg["few_steps"])
        if scan[eps_key(e)] < cfg["steps_min_accuracy"]:
            break
        chosen = e
    bar.set_postfix_str(f"masking probe pgd steps {cfg['few_steps']} vs {cfg['many_steps']} at {chosen:g}")
    steps = {
        "eps": chosen,
        "scan_few_steps": scan,
        "rule": f"largest probed eps where PGD-{cfg['few_steps']} leaves >= {100 * cfg['steps_min_accuracy']:g}% "
        f"(smallest probed eps if none)",
        "few_steps": {"steps": cfg["few_steps"], "robust_accuracy": scan[eps_key(chosen)]},
        "many_steps": {"steps": cfg["many_steps"], "robust_accuracy": accuracy(chosen, cfg["many_steps"])},
    }
    bar.update()
    return {"config": cfg, "large_eps": large, "more_steps": steps}
