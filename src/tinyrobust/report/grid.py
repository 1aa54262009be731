"""The experiment grid of ``tinyrobust reproduce``: which models, attacks and budgets, read from
``configs/reproduce/<dataset>.yaml`` and validated (a user adds a model or an attack there, not in code)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import yaml

from ..config import RunConfig, apply_overrides, config_from_dict
from ..data.waveform import SAMPLES_PER_255TH
from ..errors import ConfigError

ROLES = ["proposed", "reference", "reference_quantized", "float", "ablation", "variant"]
TOP_KEYS = {
    "dataset",
    "surrogate",
    "surrogates",
    "eps",
    "attacks",
    "onnx_attacks",
    "base",
    "budgets",
    "models",
    "pareto_runs",
    "domain",
    "eps_unit",
    "runs_dir",
    "extends",
    "report_notes",
}
DOMAINS = ("feature", "waveform")  # where the attacker acts (attacks/evaluate.py)
# eps units a grid may state its budgets in: the attack code's 1/255 of the input range, or (waveform
# domain) 16-bit sample units, 257 of which are 1/255 of the sample range (data/waveform.py)
EPS_UNITS = ("255ths", "samples")
BUDGET_KEYS = {"epochs", "train_subset", "test_subset", "attack_n", "attack_params", "skip_attacks", "cascade"}
DEFAULT_ATTACK_N = 500
# budget values given as one number or per model (``{default: N, <model key>: M}``), with the value a budget
# that omits them gets (None: required)
PER_MODEL_DEFAULTS = {"attack_n": DEFAULT_ATTACK_N, "epochs": None}
TRANSFER = "transfer"
MODEL_KEYS = {"key", "label", "role", "config", "seeds"}


@dataclass
class GridModel:
    key: str
    label: str
    role: str
    config: Dict[str, Any]
    # seeds: a model entry with ``seeds: [1, 2]`` also trains as ``<key>_s1``, ``<key>_s2`` (role variant,
    # same config but the seed); ``group`` is the entry's key for all of them, so the report can give
    # mean +- std over seeds (compare.seed_summary)
    group: str = ""
    seed: int | None = None


@dataclass
class Grid:
    path: Path
    dataset: str
    surrogates: List[str]  # float models the transfer attack crafts on: one transfer@<key> entry each
    eps: List[float]
    white: List[str]
    black: List[str]
    base: Dict[str, Any]
    budgets: Dict[str, Dict[str, Any]]
    models: List[GridModel] = field(default_factory=list)
    onnx_attacks: List[str] = field(default_factory=list)  # black-box attacks on the proposed model's ONNX file
    # extra run folders (paths or glob patterns, relative to the output folder) drawn on the Pareto plots
    pareto_runs: List[str] = field(default_factory=list)
    domain: str = "feature"  # "waveform": attack speech_commands_logmel runs through the log-mel front end
    eps_unit: str = "255ths"  # how the grid file states eps and the report labels it; self.eps is in 255ths
    runs_dir: str = "runs"  # where the trained runs live, relative to the output folder
    # protocol facts the numbers alone do not show (e.g. an eps dropped and what it had found), printed
    # under the report's headline
    report_notes: List[str] = field(default_factory=list)

    def runs_root(self, out: Path) -> Path:
        """The folder holding one run folder per model key (``<out>/runs`` unless the grid reuses
        another grid's runs, e.g. the waveform-domain grid attacks the log-mel grid's models)."""
        return Path(out) / self.runs_dir

    def eps_in_unit(self, e: float) -> float:
        """One eps (kept in 255ths) in the unit the grid file states it in: ``2`` for 2/255 or 2 samples."""
        return float(f"{e * SAMPLES_PER_255TH:.4g}") if self.eps_unit == "samples" else e

    def eps_label(self, e: float) -> str:
        """How the report writes one eps: ``2/255``, or ``32 samples`` for a waveform grid in samples."""
        if self.eps_unit == "samples":
            v = f"{self.eps_in_unit(e):g}"
            return f"{v} sample{'' if v == '1' else 's'}"
        return f"{e:g}/255"

    def model(self, key: str) -> GridModel:
        for m in self.models:
            if m.key == key:
                return m
        raise ConfigError(f"{self.path}: no model with key {key!r}; keys: {', '.join(m.key for m in self.models)}")

    def run_config(self, m: GridModel, budget: str) -> RunConfig:
        """The full training config of one grid model under one budget."""
        b = self.budget(budget)
        raw = _deep_merge(self.base, m.config)
        raw = _deep_merge(raw, {"name": m.key, "data": {"dataset": self.dataset}})
        over = [f"train.epochs={self.epochs(budget, m.key)}"]
        for k in ("train_subset", "test_subset"):
            if b.get(k):
                over.append(f"data.{k}={b[k]}")
        try:
            return config_from_dict(apply_overrides(raw, over))
        except ConfigError as exc:
            raise ConfigError(f"{self.path}: model {m.key}: {exc}") from None

    @property
    def surrogate(self) -> str | None:  # the first surrogate (older callers)
        return self.surrogates[0] if self.surrogates else None

    def attack_n(self, budget: str, key: str) -> int:
        """Test images the model ``key`` is attacked on (``attack_n``: a number, or per model with ``default``)."""
        return self._per_model(budget, "attack_n", key)

    def epochs(self, budget: str, key: str) -> int:
        """Training epochs of the model ``key`` (``epochs``: a number, or per model with ``default``)."""
        return self._per_model(budget, "epochs", key)

    def _per_model(self, budget: str, name: str, key: str) -> int:
        """A budget value given as one number or as ``{default: N, <model key>: M, ...}``; the seeds of an
        entry (``<key>_s1`` ...) share the entry's value."""
        default = PER_MODEL_DEFAULTS[name]
        n = self.budget(budget).get(name, default)
        if not isinstance(n, dict):
            return int(n)
        group = next((m.group for m in self.models if m.key == key and m.group), key)
        return int(n.get(key, n.get(group, n.get("default", default))))

    def cascade(self, budget: str) -> bool:
        return bool(self.budget(budget).get("cascade", False))

    def model_attacks(self, budget: str, key: str, ready: List[str] | None = None) -> List[str]:
        """The attack order (cascade) for model ``key``: white, then black, with ``transfer`` expanded to one
        ``transfer@<surrogate>`` per surrogate other than the model itself (only those in ``ready``, when given),
        placed LAST: attacks some compared model cannot face come after the common ones, so the common set is a
        prefix of every model's cascade and the report's worst case over it is exact."""
        white, black = self.attacks_for(budget)
        names = [a for a in white + black if a != TRANSFER]
        if TRANSFER in white + black:
            names += [f"{TRANSFER}@{s}" for s in self.surrogates if s != key and (ready is None or s in ready)]
        return names

    def attacks_for(self, budget: str) -> tuple[List[str], List[str]]:
        """(white, black) attack names run under ``budget`` (its ``skip_attacks`` removed)."""
        skip = set(self.budget(budget).get("skip_attacks") or [])
        return [a for a in self.white if a not in skip], [a for a in self.black if a not in skip]

    def budget(self, name: str) -> Dict[str, Any]:
        if name not in self.budgets:
            raise ConfigError(f"unknown budget {name!r}; {self.path} defines: {', '.join(self.budgets)}")
        return self.budgets[name]


def _deep_merge(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _check_attacks(path: Path, atk: Dict[str, Any], budgets: Dict[str, Any]) -> None:
    """Attack names must be registered and in the family they are listed under."""
    from ..attacks import get_attack
    from ..errors import AttackError

    for family in ("white", "black"):
        for name in atk.get(family) or []:
            try:
                spec = get_attack(name)
            except AttackError as exc:
                raise ConfigError(f"{path}: attacks.{family}: {exc}") from None
            if spec.family != family and not (spec.family == "ensemble" and family == "white"):
                raise ConfigError(f"{path}: attacks.{family}: {name!r} is a {spec.family}-box attack")
    for bname, b in budgets.items():
        for name in b.get("skip_attacks") or []:
            try:
                get_attack(name)
            except AttackError as exc:
                raise ConfigError(f"{path}: budgets.{bname}.skip_attacks: {exc}") from None
        for name in b.get("attack_params") or {}:
            if name != "masking":
                try:
                    get_attack(name)
                except AttackError as exc:
                    raise ConfigError(f"{path}: budgets.{bname}.attack_params: {exc}") from None


def _read_raw(path: Path, seen: tuple = ()) -> Dict[str, Any]:
    """The grid file as a mapping; ``extends: <grid name>`` starts from that grid (a file in the same
    folder) and overrides its keys (mappings merge, lists and values replace)."""
    if not path.is_file():
        raise ConfigError(f"grid file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    _require(isinstance(raw, dict), f"{path}: top level must be a mapping")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(TOP_KEYS))}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    _require(isinstance(parent, str) and parent, f"{path}: extends must name a grid (a file in {path.parent})")
    ppath = path.parent / f"{parent}.yaml"
    _require(ppath not in seen and ppath != path, f"{path}: extends {parent!r} makes a cycle")
    if not ppath.is_file():
        raise ConfigError(f"{path}: extends {parent!r}, but {ppath} does not exist")
    return _deep_merge(_read_raw(ppath, (*seen, path)), raw)


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    raw = _read_raw(path)
    for k in ("dataset", "eps", "attacks", "budgets", "models"):
        _require(k in raw, f"{path}: missing key {k!r}")
    domain = raw.get("domain", "feature")
    _require(domain in DOMAINS, f"{path}: domain {domain!r}; choose one of: {', '.join(DOMAINS)}")
    _require(
        domain == "feature" or raw["dataset"] == "speech_commands_logmel",
        f"{path}: domain waveform needs dataset speech_commands_logmel (log-mel models); got {raw['dataset']!r}",
    )
    eps_unit = raw.get("eps_unit", "255ths")
    _require(eps_unit in EPS_UNITS, f"{path}: eps_unit {eps_unit!r}; choose one of: {', '.join(EPS_UNITS)}")
    _require(eps_unit != "samples" or domain == "waveform", f"{path}: eps_unit samples needs domain waveform")
    scale = SAMPLES_PER_255TH if eps_unit == "samples" else 1.0
    eps = raw["eps"]
    _require(
        isinstance(eps, list)
        and eps
        and all(isinstance(e, (int, float)) and not isinstance(e, bool) and 0 < e / scale <= 255 for e in eps),
        f"{path}: eps must be a non-empty list of numbers in (0, 255] (units /255)"
        if scale == 1.0
        else f"{path}: eps must be a non-empty list of 16-bit sample amplitudes in (0, 65535]",
    )
    runs_dir = raw.get("runs_dir", "runs")
    _require(
        isinstance(runs_dir, str) and runs_dir and not Path(runs_dir).is_absolute(),
        f"{path}: runs_dir must be a folder relative to the output folder (e.g. ../speech_commands_logmel/runs)",
    )
    atk = raw["attacks"]
    _require(
        isinstance(atk, dict) and set(atk) <= {"white", "black"},
        f"{path}: attacks must be a mapping with keys white and black",
    )
    budgets = raw["budgets"]
    _require(isinstance(budgets, dict) and budgets, f"{path}: budgets must be a non-empty mapping")
    for name, b in budgets.items():
        _require(isinstance(b, dict), f"{path}: budgets.{name} must be a mapping")
        bad = set(b) - BUDGET_KEYS
        if bad:
            raise ConfigError(
                f"{path}: budgets.{name}: unknown key {sorted(bad)[0]!r}; allowed: {', '.join(sorted(BUDGET_KEYS))}"
            )
    models = []
    keys = set()
    for i, m in enumerate(raw["models"] or []):
        _require(isinstance(m, dict), f"{path}: models[{i}] must be a mapping")
        bad = set(m) - MODEL_KEYS
        if bad:
            raise ConfigError(
                f"{path}: models[{i}]: unknown key {sorted(bad)[0]!r}; allowed: {', '.join(sorted(MODEL_KEYS))}"
            )
        _require(isinstance(m.get("key"), str) and m["key"], f"{path}: models[{i}].key must be a non-empty string")
        _require(m.get("key") not in keys, f"{path}: models[{i}].key {m['key']!r} is used twice")
        keys.add(m["key"])
        role = m.get("role", "variant")
        _require(role in ROLES, f"{path}: models[{i}].role {role!r}; choose one of: {', '.join(ROLES)}")
        config = m.get("config") or {}
        label = m.get("label", m["key"])
        base_seed = config.get("seed", (raw.get("base") or {}).get("seed", 0))
        seeds = m.get("seeds") or []
        _require(
            isinstance(seeds, list)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
            and len(set(seeds)) == len(seeds)
            and base_seed not in seeds,
            f"{path}: models[{i}].seeds must be a list of distinct integers >= 0 other than the entry's own seed "
            f"({base_seed}); the entry itself is that seed",
        )
        models.append(GridModel(m["key"], label, role, config, m["key"], base_seed))
        for sd in seeds:
            key = f"{m['key']}_s{sd}"
            _require(key not in keys, f"{path}: models[{i}].seeds: key {key!r} is used twice")
            keys.add(key)
            models.append(
                GridModel(key, f"{label}, seed {sd}", "variant", _deep_merge(config, {"seed": sd}), m["key"], sd)
            )
    if "surrogate" in raw and "surrogates" in raw:
        raise ConfigError(f"{path}: give either surrogate or surrogates, not both")
    surrogates = raw.get("surrogates", [raw["surrogate"]] if raw.get("surrogate") else [])
    _require(
        isinstance(surrogates, list)
        and all(isinstance(s, str) for s in surrogates)
        and len(set(surrogates)) == len(surrogates),
        f"{path}: surrogates must be a list of distinct model keys",
    )
    for name, b in budgets.items():
        for per_model, default in PER_MODEL_DEFAULTS.items():
            n = b.get(per_model, default)
            if isinstance(n, dict):
                bad = sorted(set(n) - keys - {"default"})
                _require(
                    not bad,
                    f"{path}: budgets.{name}.{per_model}: {bad[0] if bad else ''!r} is not a model key; "
                    f"keys: {', '.join(m.key for m in models)} (or default)",
                )
                _require(
                    default is not None or "default" in n,
                    f"{path}: budgets.{name}.{per_model}: a mapping needs a default (the value of every other model)",
                )
                vals = list(n.values())
            else:
                vals = [n]
            _require(
                all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in vals),
                f"{path}: budgets.{name}.{per_model} must be an integer >= 1 or a mapping of model key to one",
            )
        _require(isinstance(b.get("cascade", False), bool), f"{path}: budgets.{name}.cascade must be true or false")
    _require(sum(m.role == "proposed" for m in models) == 1, f"{path}: exactly one model must have role: proposed")
    _require(any(m.role == "reference" for m in models), f"{path}: at least one model must have role: reference")
    onnx_attacks = list(raw.get("onnx_attacks") or [])
    _check_attacks(path, {**atk, "black": list(atk.get("black") or []) + onnx_attacks}, budgets)
    if any(a.split("@")[0] == "transfer" for a in onnx_attacks):
        raise ConfigError(f"{path}: onnx_attacks: transfer is not supported on the exported file; use query attacks")
    _require(
        domain == "feature" or not onnx_attacks,
        f"{path}: onnx_attacks must be empty with domain waveform (the exported file takes log-mel images)",
    )
    pareto_runs = raw.get("pareto_runs") or []
    _require(
        isinstance(pareto_runs, list) and all(isinstance(r, str) and r for r in pareto_runs),
        f"{path}: pareto_runs must be a list of run folders or glob patterns (relative to the output folder)",
    )
    report_notes = raw.get("report_notes") or []
    _require(
        isinstance(report_notes, list) and all(isinstance(r, str) and r.strip() for r in report_notes),
        f"{path}: report_notes must be a list of sentences",
    )
    grid = Grid(
        path,
        raw["dataset"],
        list(surrogates),
        [float(e) / scale for e in eps],
        list(atk.get("white") or []),
        list(atk.get("black") or []),
        raw.get("base") or {},
        budgets,
        models,
        onnx_attacks,
        list(pareto_runs),
        domain,
        eps_unit,
        runs_dir,
        [" ".join(r.split()) for r in report_notes],
    )
    for s in grid.surrogates:
        grid.model(s)
    for budget in budgets:  # every model's config must validate under every budget
        for m in models:
            grid.run_config(m, budget)
    return grid
