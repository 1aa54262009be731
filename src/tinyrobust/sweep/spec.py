"""Sweep files: what to vary, how each trial is scored, and the choice rule, validated up front.

A sweep file (YAML, ``configs/sweeps/``) is a base run config plus axes. Every trial's config is
expanded and checked with the run-config schema (tinyrobust.config) *before* any trial starts, so a
typo in trial 37 fails in the first second, naming the key.

Axes (``grid:``, crossed; ``random:``, sampled) take three forms:
- a config key (``model.quant.weight: [int4, ternary]``): the key gets each value;
- a variable (``lambda: {logspace: [0.001, 0.1, 5]}``): a name without a dot that is not a config
  key; its value goes wherever a setting says ``"${lambda}"``;
- named variants (``jr_mode: {whole: {jr.weight: "${lambda}"}, per_layer: {...}}``): a mapping of
  label -> settings, one label per trial.
``include:`` adds single trials (a partial assignment of the axes, e.g. each no-JR twin once).
A trial is identified by a digest of its final config, so two assignments that give the same config
are one trial, and a trial keeps its folder when other axes grow.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..config import NAME_PATTERN, RunConfig, _yaml_load, config_from_dict, config_to_dict
from ..errors import ConfigError

TOP_KEYS = ("name", "base", "set", "grid", "random", "include", "evaluation", "resources", "choice")
EVAL_DEFAULTS: Dict[str, Any] = {
    # per-image worst case of APGD (CE then DLR) and Square: APGD alone is fooled by our quantized JR
    # models (issue 12: 44% left by APGD-CE where Square-5000 leaves 21%), so Square gets 5000 queries
    "attacks": ["apgd", "square"],
    "params": {"square": {"queries": 5000}},
    "eps": 2.0,  # L-inf, pixel units /255
    "n": 500,  # validation images attacked (stratified, nested: the first k of n are the k-subset)
    "clean_n": None,  # validation images for clean accuracy (null: all of them)
    "jacobian_n": 200,  # validation images for the median ||d logits / d pixels||_F^2
    "seed": 0,
}
RESOURCE_DEFAULTS: Dict[str, Any] = {"concurrent": 2, "threads_per_trial": 1}
_VAR = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


@dataclass
class Trial:
    """One point of the sweep: its axis values (for the table) and its validated config."""

    key: str  # stable id: digest of the config (without its name)
    values: Dict[str, Any]  # axis name -> value or variant label
    cfg: RunConfig

    @property
    def name(self) -> str:
        return self.cfg.name


@dataclass
class SweepSpec:
    name: str
    source: Optional[Path]
    axes: List[str]
    trials: List[Trial]
    evaluation: Dict[str, Any]
    resources: Dict[str, Any]
    choice: Dict[str, Any] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ schema helpers


def _config_field(path: str) -> Optional[tuple]:
    """(type, metadata) of a dotted run-config key, or None if there is no such key. Below a mapping
    field (``jr.layers.block3``, ``model.quant.overrides.<layer>``) any sub-key is accepted here; the
    full config check afterwards judges it."""
    tp: Any = RunConfig
    meta: dict = {}
    parts = path.split(".")
    for part in parts:
        origin = typing.get_origin(tp)
        if origin is typing.Union:
            tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
            origin = typing.get_origin(tp)
        if origin in (dict, Dict):
            return (tp, meta)
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        if part not in fields:
            return None
        tp, meta = hints[part], dict(fields[part].metadata)
    return (tp, meta)


def _set_path(d: Dict[str, Any], path: str, value: Any) -> None:
    node = d
    parts = path.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


def _substitute(value: Any, variables: Dict[str, Any], where: str) -> Any:
    if isinstance(value, str):
        m = _VAR.match(value)
        if m:
            if m.group(1) not in variables:
                raise ConfigError(
                    f"{where}: ${{{m.group(1)}}} is not a variable of this trial; "
                    f"variables: {', '.join(variables) or '(none)'}"
                )
            return variables[m.group(1)]
        return value
    if isinstance(value, dict):
        return {k: _substitute(v, variables, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    return value


def _refs(value: Any) -> set:
    if isinstance(value, str):
        m = _VAR.match(value)
        return {m.group(1)} if m else set()
    if isinstance(value, dict):
        return set().union(*(_refs(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_refs(v) for v in value)) if value else set()
    return set()


def _number(where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ConfigError(f"{where}: expected a finite number, got {v!r}")
    return float(v)


def _values(where: str, spec: Any) -> List[Any]:
    """A grid axis: a list, or {logspace|linspace: [from, to, count]}, or {values: [...]}."""
    if isinstance(spec, list):
        vals = spec
    elif isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in ("logspace", "linspace", "values"):
        kind, arg = next(iter(spec.items()))
        if kind == "values":
            if not isinstance(arg, list):
                raise ConfigError(f"{where}.values: expected a list")
            vals = arg
        else:
            if not (isinstance(arg, list) and len(arg) == 3):
                raise ConfigError(f"{where}.{kind}: expected [from, to, count], e.g. [0.001, 0.1, 5]")
            lo, hi = _number(f"{where}.{kind}", arg[0]), _number(f"{where}.{kind}", arg[1])
            count = arg[2]
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigError(f"{where}.{kind}: count must be a positive integer, got {count!r}")
            if kind == "logspace":
                if lo <= 0 or hi <= 0:
                    raise ConfigError(f"{where}.logspace: from and to must be > 0, got {lo:g}, {hi:g}")
                arr = np.geomspace(lo, hi, count)
            else:
                arr = np.linspace(lo, hi, count)
            vals = [float(f"{v:.6g}") for v in arr]  # 0.00316228, not 0.0031622776601683794
    else:
        raise ConfigError(
            f"{where}: expected a list of values, {{logspace: [from, to, count]}}, "
            f"{{linspace: [...]}} or a mapping of variant label -> settings; got {spec!r}"
        )
    if not vals:
        raise ConfigError(f"{where}: empty: give at least one value")
    return vals


def _sample(where: str, dist: Any, rng: np.random.Generator) -> Any:
    if not (isinstance(dist, dict) and len(dist) == 1):
        raise ConfigError(
            f"{where}: expected one of {{loguniform|uniform: [lo, hi]}}, {{randint: [lo, hi]}}, "
            f"{{choice: [...]}}; got {dist!r}"
        )
    kind, arg = next(iter(dist.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{where}.choice: expected a non-empty list")
        return arg[int(rng.integers(len(arg)))]
    if kind not in ("loguniform", "uniform", "randint"):
        raise ConfigError(f"{where}: unknown distribution {kind!r}; use loguniform, uniform, randint or choice")
    if not (isinstance(arg, list) and len(arg) == 2):
        raise ConfigError(f"{where}.{kind}: expected [lo, hi]")
    lo, hi = _number(f"{where}.{kind}", arg[0]), _number(f"{where}.{kind}", arg[1])
    if hi < lo:
        raise ConfigError(f"{where}.{kind}: lo {lo:g} is above hi {hi:g}")
    if kind == "randint":
        return int(rng.integers(int(lo), int(hi) + 1))
    if kind == "loguniform":
        if lo <= 0:
            raise ConfigError(f"{where}.loguniform: lo must be > 0, got {lo:g}")
        return float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.4g}")
    return float(f"{rng.uniform(lo, hi):.4g}")


def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(d, dict) and d:
        out: Dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def config_key(cfg: RunConfig) -> str:
    """A trial's id: sha256 of the settings that differ from the schema's defaults (name left out).
    A key added to the schema later, with a default, does not change it, so a sweep resumed with a
    newer tinyrobust finds its trials; changing a default that a trial relies on does."""
    d, default = _flat(config_to_dict(cfg)), _flat(config_to_dict(RunConfig()))
    diff = {k: v for k, v in d.items() if k != "name" and (k not in default or default[k] != v)}
    return hashlib.sha256(json.dumps(diff, sort_keys=True, default=str).encode()).hexdigest()[:10]


# ------------------------------------------------------------------ loading


def _read_yaml(path: Path, what: str) -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found")
    try:
        raw = _yaml_load(path.read_text(encoding="utf-8")) or {}
    except Exception as exc:  # yaml.YAMLError, UnicodeDecodeError, OSError
        raise ConfigError(f"{path}: cannot read it as YAML: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return raw


def load_sweep(path: str | Path, overrides: Optional[Dict[str, Any]] = None) -> SweepSpec:
    """Read and fully validate a sweep file (every trial's config included)."""
    path = Path(path)
    raw = _read_yaml(path, "sweep file")
    if overrides:
        raw = {**raw, **overrides}
    return parse_sweep(raw, source=path)


def parse_sweep(raw: Dict[str, Any], source: Optional[Path] = None) -> SweepSpec:
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; allowed keys: {', '.join(TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN[0], name) or len(name) > 40:
        raise ConfigError(f"name: {name!r} is not allowed; {NAME_PATTERN[1]} (at most 40)")

    base = raw.get("base", {})
    if isinstance(base, str):
        p = Path(base)
        if not p.is_absolute() and source is not None and (source.parent / p).is_file():
            p = source.parent / p
        base = _read_yaml(p, "base config")
    if not isinstance(base, dict):
        raise ConfigError("base: expected a run config (a mapping) or the path of one")
    base = copy.deepcopy(base)
    fixed = raw.get("set") or {}
    if not isinstance(fixed, dict):
        raise ConfigError("set: expected a mapping of config key -> value")
    for k, v in fixed.items():
        if _config_field(str(k)) is None:
            raise ConfigError(f"set.{k}: not a config key (see `tinyrobust train --help` and configs/)")
        _set_path(base, str(k), v)

    grid = raw.get("grid") or {}
    rnd = raw.get("random") or {}
    if not isinstance(grid, dict) or not isinstance(rnd, dict):
        raise ConfigError("grid and random: expected mappings of axis -> values")
    if "grid" in raw and not grid:
        raise ConfigError("grid: empty: give at least one axis (or drop the key)")
    axes_values: Dict[str, List[Any]] = {}
    kinds: Dict[str, str] = {}  # axis -> "key" | "var" | "variant"
    variants: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for axis, spec in grid.items():
        axis = str(axis)
        where = f"grid.{axis}"
        if (
            isinstance(spec, dict)
            and spec
            and not (len(spec) == 1 and next(iter(spec)) in ("logspace", "linspace", "values"))
        ):
            kinds[axis] = "variant"
            for label, settings in spec.items():
                if not isinstance(settings, dict):
                    raise ConfigError(f"{where}.{label}: expected a mapping of config key -> value")
                for k in settings:
                    if _config_field(str(k)) is None:
                        raise ConfigError(f"{where}.{label}.{k}: not a config key")
            variants[axis] = {str(k): v for k, v in spec.items()}
            axes_values[axis] = list(variants[axis])
            continue
        if isinstance(spec, dict) and not spec:
            raise ConfigError(f"{where}: empty: give at least one value")
        axes_values[axis] = _values(where, spec)
        kinds[axis] = "key" if _config_field(axis) is not None else "var"

    samples, rnd_seed, space = 0, 0, {}
    if rnd:
        extra = [k for k in rnd if k not in ("samples", "seed", "space")]
        if extra:
            raise ConfigError(f"random: unknown key {extra[0]!r}; allowed keys: samples, seed, space")
        samples = rnd.get("samples", 0)
        if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 10000:
            raise ConfigError(f"random.samples: {samples!r} is out of range; allowed [1, 10000]")
        rnd_seed = rnd.get("seed", 0)
        space = rnd.get("space") or {}
        if not isinstance(space, dict) or not space:
            raise ConfigError("random.space: empty: give at least one axis and its distribution")
        for axis in space:
            if str(axis) in axes_values:
                raise ConfigError(f"random.space.{axis}: already a grid axis")
            kinds[str(axis)] = "key" if _config_field(str(axis)) is not None else "var"

    # a variable must be used somewhere, or it is most likely a misspelt config key
    used = _refs(base) | _refs(variants) | _refs(raw.get("include") or [])
    for axis, kind in kinds.items():
        if kind == "var" and axis not in used:
            where = f"random.space.{axis}" if axis in space else f"grid.{axis}"
            raise ConfigError(f'{where}: not a config key, and no setting uses it as "${{{axis}}}"')

    axes = list(axes_values) + [str(a) for a in space]
    assignments: List[Dict[str, Any]] = []
    if axes_values:
        for combo in itertools.product(*axes_values.values()):
            assignments.append(dict(zip(axes_values, combo)))
    if space:
        rng = np.random.default_rng(rnd_seed)
        base_assign = assignments or [{}]
        assignments = []
        for a in base_assign:
            for _ in range(samples):
                assignments.append({**a, **{str(k): _sample(f"random.space.{k}", d, rng) for k, d in space.items()}})
    include = raw.get("include") or []
    if not isinstance(include, list):
        raise ConfigError("include: expected a list of partial assignments, e.g. [{jr_mode: none}]")
    for i, inc in enumerate(include):
        if not isinstance(inc, dict) or not inc:
            raise ConfigError(f"include[{i}]: expected a non-empty mapping of axis -> value")
        for axis, v in inc.items():
            if str(axis) not in kinds:
                kinds[str(axis)] = "key" if _config_field(str(axis)) is not None else None
                if kinds[str(axis)] is None:
                    raise ConfigError(f"include[{i}].{axis}: neither an axis of this sweep nor a config key")
                axes.append(str(axis))
            if kinds[str(axis)] == "variant" and v not in variants[str(axis)]:
                raise ConfigError(
                    f"include[{i}].{axis}: {v!r} is not a variant; variants: {', '.join(variants[str(axis)])}"
                )
        assignments.append({str(k): v for k, v in inc.items()})
    if not assignments:
        raise ConfigError("no trials: give a grid, a random search or include entries")

    trials: List[Trial] = []
    seen: Dict[str, Trial] = {}
    for a in assignments:
        variables = {k: v for k, v in a.items() if kinds.get(k) == "var"}
        label = ", ".join(f"{k}={v}" for k, v in a.items())
        d = copy.deepcopy(base)
        where = f"trial ({label})"
        for axis, v in a.items():
            if kinds[axis] == "key":
                _set_path(d, axis, v)
        for axis, v in a.items():
            if kinds[axis] == "variant":
                for k, val in variants[axis][v].items():
                    _set_path(d, str(k), _substitute(val, variables, f"grid.{axis}.{v}.{k}"))
        d = _substitute(d, variables, "base")
        d["name"] = "trial"
        try:
            cfg = config_from_dict(d)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        # a variable no chosen setting uses (lambda of the no-JR variant) is not part of this trial
        refs = _refs(base) | set().union(*[_refs(variants[ax][v]) for ax, v in a.items() if kinds[ax] == "variant"])
        a = {k: v for k, v in a.items() if kinds[k] != "var" or k in refs}
        key = config_key(cfg)
        if key in seen:  # same config from another assignment (e.g. lambda of a no-JR variant): one trial
            continue
        cfg.name = f"{name}-{key}"
        trial = Trial(key, a, cfg)
        seen[key] = trial
        trials.append(trial)

    evaluation = _section(raw, "evaluation", EVAL_DEFAULTS)
    if "params" not in (raw.get("evaluation") or {}) and isinstance(evaluation["attacks"], list):
        # the default parameters only for the attacks the file chose
        evaluation["params"] = {k: v for k, v in evaluation["params"].items() if k in evaluation["attacks"]}
    _check_evaluation(evaluation)
    resources = _section(raw, "resources", RESOURCE_DEFAULTS)
    for k in ("concurrent", "threads_per_trial"):
        v = resources[k]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096:
            raise ConfigError(f"resources.{k}: {v!r} is out of range; allowed [1, 4096]")
    choice = raw.get("choice") or {}
    _check_choice(choice, kinds, variants)
    return SweepSpec(name, source, axes, trials, evaluation, resources, choice, raw)


def _section(raw: Dict[str, Any], key: str, defaults: Dict[str, Any]) -> Dict[str, Any]:
    given = raw.get(key) or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{key}: expected a mapping")
    unknown = [k for k in given if k not in defaults]
    if unknown:
        raise ConfigError(f"{key}: unknown key {unknown[0]!r}; allowed keys: {', '.join(defaults)}")
    return {**copy.deepcopy(defaults), **given}


def _check_evaluation(ev: Dict[str, Any]) -> None:
    from ..attacks.registry import get_attack
    from ..attacks.runner import resolve_params, validate_eps
    from ..errors import TinyRobustError

    attacks = ev["attacks"]
    if isinstance(attacks, str):
        attacks = ev["attacks"] = [a.strip() for a in attacks.split(",") if a.strip()]
    if not isinstance(attacks, list):
        raise ConfigError("evaluation.attacks: expected a list of attack names, e.g. [apgd, square]")
    try:
        for a in attacks:
            get_attack(a)
            if get_attack(a).needs_surrogate:
                raise ConfigError(f"evaluation.attacks: {a} needs a surrogate model; the sweep does not train one")
        if ev["params"] is not None and not isinstance(ev["params"], dict):
            raise ConfigError("evaluation.params: expected a mapping of attack -> {parameter: value}")
        if attacks:
            resolve_params(attacks, ev["params"] or {})
        validate_eps([ev["eps"]])
    except ConfigError:
        raise
    except TinyRobustError as exc:
        raise ConfigError(f"evaluation: {exc}") from None
    for k, lo in (("n", 1), ("jacobian_n", 0), ("seed", 0)):
        v = ev[k]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= 10**7:
            raise ConfigError(f"evaluation.{k}: {v!r} is out of range; allowed an integer >= {lo}")
    if ev["clean_n"] is not None and (not isinstance(ev["clean_n"], int) or ev["clean_n"] < ev["n"]):
        raise ConfigError(f"evaluation.clean_n: {ev['clean_n']!r}: must be null or an integer >= evaluation.n")


CHOICE_KEYS = ("rule", "maximize", "group_by", "twin", "max_clean_drop")
METRICS = ("val_robust_accuracy", "val_clean_accuracy")


def _check_choice(choice: Any, kinds: Dict[str, Any], variants: Dict[str, Any]) -> None:
    if not choice:
        return
    if not isinstance(choice, dict):
        raise ConfigError("choice: expected a mapping")
    unknown = [k for k in choice if k not in CHOICE_KEYS]
    if unknown:
        raise ConfigError(f"choice: unknown key {unknown[0]!r}; allowed keys: {', '.join(CHOICE_KEYS)}")
    if not isinstance(choice.get("rule", ""), str):
        raise ConfigError("choice.rule: expected the rule in words (a string)")
    if choice.get("maximize", "val_robust_accuracy") not in METRICS:
        raise ConfigError(f"choice.maximize: choose one of {', '.join(METRICS)}")
    for k in choice.get("group_by") or []:
        if k not in kinds:
            raise ConfigError(f"choice.group_by: {k!r} is not an axis of this sweep")
    twin = choice.get("twin") or {}
    if not isinstance(twin, dict):
        raise ConfigError("choice.twin: expected a partial assignment, e.g. {jr_mode: none}")
    for k, v in twin.items():
        if k not in kinds:
            raise ConfigError(f"choice.twin.{k}: not an axis of this sweep")
        if kinds[k] == "variant" and v not in variants[k]:
            raise ConfigError(f"choice.twin.{k}: {v!r} is not a variant of {k}")
    drop = choice.get("max_clean_drop")
    if drop is not None and (isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop <= 1):
        raise ConfigError(
            f"choice.max_clean_drop: {drop!r} is out of range; allowed [0, 1] (a fraction: 0.05 = 5 points)"
        )
