"""Experiment configs: YAML files in configs/, validated against a typed schema.

Every key is checked: an unknown key, a wrong type or an out-of-range value raises ConfigError
naming the key's full path and what is allowed. ``--set a.b=value`` overrides are parsed as YAML
scalars and go through the same checks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from .errors import ConfigError
from .quant.table import act_names, weight_names

# the allowed quantizer names come from the one quantizer table (quant/table.py)
WEIGHT_QUANTS = weight_names()
ACT_QUANTS = act_names()


def _meta(*, choices=None, lo=None, hi=None, pattern=None, doc="", lo_open=False):
    """``lo_open``: the lower bound itself is not allowed (an interval (lo, hi])."""
    return {"choices": choices, "lo": lo, "hi": hi, "pattern": pattern, "doc": doc, "lo_open": lo_open}


# a run's name becomes a folder name (runs/<name>): one plain path component, nothing that climbs out
NAME_PATTERN = (
    r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,99}",
    "use 1-100 letters, digits and _ . + = - (not starting with . or -), e.g. qnn_int4_jr",
)


@dataclass
class LayerQuant:
    weight: Optional[str] = field(default=None, metadata=_meta(choices=WEIGHT_QUANTS))
    act: Optional[str] = field(default=None, metadata=_meta(choices=ACT_QUANTS))


@dataclass
class QuantConfig:
    weight: str = field(default="float", metadata=_meta(choices=WEIGHT_QUANTS, doc="default weight quantizer"))
    act: str = field(default="float", metadata=_meta(choices=ACT_QUANTS, doc="default activation quantizer"))
    first_weight: Optional[str] = field(
        default=None, metadata=_meta(choices=WEIGHT_QUANTS, doc="first layer (null: same as weight)")
    )
    last_weight: Optional[str] = field(
        default=None, metadata=_meta(choices=WEIGHT_QUANTS, doc="classifier layer (null: same as weight)")
    )
    overrides: Dict[str, LayerQuant] = field(default_factory=dict, metadata=_meta(doc="per-layer quantizers"))


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    data_dir: Optional[str] = None
    train_subset: Optional[int] = field(default=None, metadata=_meta(lo=10, doc="stratified training subset size"))
    test_subset: Optional[int] = field(default=None, metadata=_meta(lo=10, doc="stratified test subset size"))
    val_size: int = field(
        default=0,
        metadata=_meta(
            lo=0,
            doc="validation images held out of the TRAINING split (stratified, seeded by val_seed); "
            "0: none, the run trains on the whole training split",
        ),
    )
    val_seed: int = field(
        default=0,
        metadata=_meta(
            lo=0,
            hi=2**31 - 1,
            doc="seed of the validation split, apart from the run's seed so that runs with "
            "different seeds share one validation set",
        ),
    )


@dataclass
class ModelConfig:
    name: str = "qnn"
    quant: QuantConfig = field(default_factory=QuantConfig)


ADV_METHODS = ["none", "fgsm_rs", "pgd", "trades"]
KEEP_RULES = ["best_if_significant", "best_robust", "last"]  # train.adversarial.keep; applied in train/keep.py


@dataclass
class AdversarialConfig:
    """Adversarial training (train/adversarial.py): the step trains on L-inf perturbed inputs found
    through the same quantized forward pass; eps and step sizes in pixel units /255."""

    method: str = field(
        default="none",
        metadata=_meta(
            choices=ADV_METHODS, doc="fgsm_rs: Wong et al. 2020; pgd: Madry et al. 2018; trades: Zhang et al. 2019"
        ),
    )
    eps: float = field(default=8.0, metadata=_meta(lo=0.0, lo_open=True, hi=255.0, doc="L-inf radius, /255"))
    steps: int = field(default=10, metadata=_meta(lo=1, hi=1000, doc="attack steps of pgd and trades"))
    step_size: Optional[float] = field(
        default=None,
        metadata=_meta(
            lo=0.0,
            lo_open=True,
            hi=255.0,
            doc="/255; null: 1.25 eps for fgsm_rs (Wong et al.), 2.5 eps / steps for pgd and trades",
        ),
    )
    beta: float = field(default=6.0, metadata=_meta(lo=0.0, hi=1e6, doc="TRADES weight of the KL term"))
    check_n: int = field(
        default=500,
        metadata=_meta(
            lo=0,
            hi=100000,
            doc="images of the per-epoch PGD check (validation split, else a fixed training subset); 0: off",
        ),
    )
    check_steps: int = field(default=10, metadata=_meta(lo=1, hi=1000, doc="PGD steps of the per-epoch check"))
    early_stop_drop: Optional[float] = field(
        default=0.2,
        metadata=_meta(
            lo=0.0,
            lo_open=True,
            hi=1.0,
            doc="stop when the check's robust accuracy falls this far below its best (catastrophic overfitting); "
            "null: never stop",
        ),
    )
    keep: str = field(
        default="best_if_significant",
        metadata=_meta(
            choices=KEEP_RULES,
            doc="weights that model.safetensors holds at the end: best_if_significant: the last epoch unless the "
            "best check beats it with a paired 95% interval above 0 or the early stop fired; best_robust: the "
            "best check (Rice et al. 2020); last; both ends are kept as files (train/keep.py)",
        ),
    )


@dataclass
class TrainConfig:
    epochs: int = field(default=10, metadata=_meta(lo=1, hi=10000))
    batch_size: int = field(default=128, metadata=_meta(lo=1, hi=65536))
    optimizer: str = field(default="sgd", metadata=_meta(choices=["sgd", "adam"]))
    lr: float = field(default=0.05, metadata=_meta(lo=0.0, hi=10.0))
    momentum: float = field(default=0.9, metadata=_meta(lo=0.0, hi=1.0))
    nesterov: bool = True
    weight_decay: float = field(default=5e-4, metadata=_meta(lo=0.0, hi=1.0))
    schedule: str = field(default="cosine", metadata=_meta(choices=["cosine", "constant"]))
    warmup_epochs: float = field(default=0.0, metadata=_meta(lo=0.0, hi=1000.0))
    label_smoothing: float = field(default=0.0, metadata=_meta(lo=0.0, hi=0.5))
    augment: Optional[bool] = field(default=None, metadata=_meta(doc="null: the dataset's default"))
    threads: int = field(default=2, metadata=_meta(lo=1, hi=512))
    max_batches_per_epoch: Optional[int] = field(default=None, metadata=_meta(lo=1, doc="cap for smoke tests"))
    bn_reestimate_batches: int = field(
        default=0,
        metadata=_meta(
            lo=0,
            hi=100000,
            doc="after training, recompute BatchNorm statistics over this many training batches "
            "with the final weights (train/bn_reestimate.py); 0: off",
        ),
    )
    dampen: float = field(
        default=0.0,
        metadata=_meta(
            lo=0.0,
            hi=1e6,
            doc="oscillation dampening (Nagel et al. 2022; train/oscillation.py): final weight of "
            "sum (q(w) - clip(w))^2 over the quantized weights, reached by a cosine ramp from 0; 0: off",
        ),
    )
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)


@dataclass
class JRConfig:
    """Jacobian regularization (Hoffman et al. 2019): loss = CE + lambda/2 * ||J||_F^2 estimate."""

    weight: float = field(default=0.0, metadata=_meta(lo=0.0, hi=1e6, doc="lambda for the input->logits Jacobian"))
    n_proj: int = field(default=1, metadata=_meta(lo=1, hi=1000, doc="random projections per step"))
    layers: Dict[str, float] = field(default_factory=dict, metadata=_meta(lo=0.0, hi=1e6, doc="block name -> lambda"))
    batch_fraction: float = field(
        default=1.0,
        metadata=_meta(
            lo=0.01,
            hi=1.0,
            doc="share of each batch the penalty is estimated on (1.0: all of it, as Hoffman et al.; "
            "0.25: a quarter, in its own forward pass, about half the extra cost)",
        ),
    )


@dataclass
class RunConfig:
    name: str = field(default="run", metadata=_meta(pattern=NAME_PATTERN, doc="run name, also its folder name"))
    seed: int = field(default=0, metadata=_meta(lo=0, hi=2**31 - 1))
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    jr: JRConfig = field(default_factory=JRConfig)


# ---------------------------------------------------------------- parsing


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.2 does; PyYAML's YAML 1.1 rules
    want a dot, ``1.0e-3``, and would hand the string '1e-3' to a float field)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin in (dict, Dict):
        k, v = typing.get_args(tp)
        return f"mapping of {_type_name(k)} -> {_type_name(v)}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _check_scalar(path: str, value: Any, tp: Any, meta: dict) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_short(value)}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {_short(value)}")
        try:
            value = float(value)
        except OverflowError:  # an int too large for a float
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {_short(value)}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_short(value)}")
        pattern = meta.get("pattern")
        if pattern is not None and not re.fullmatch(pattern[0], value):
            raise ConfigError(f"{path}: {_short(value)} is not allowed; {pattern[1]}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{path}: {_short(value)} is not allowed; choose one of: {', '.join(map(str, choices))}")
    lo, hi, lo_open = meta.get("lo"), meta.get("hi"), meta.get("lo_open", False)
    if lo is not None and (value < lo or lo_open and value == lo) or hi is not None and value > hi:
        rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ConfigError(f"{path}: {_short(value)} is out of range; allowed {rng}")
    return value


def _key(key: str) -> str:
    """A key as it goes into a message: as is if printable (``train.epochs``), else repr()'d."""
    return key if key.isprintable() and len(key) <= 80 else _short(key)


def _short(value: Any, limit: int = 80) -> str:
    """repr() cut to ``limit`` characters, so an error stays one readable line."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _parse(path: str, value: Any, tp: Any, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _parse(path, value, args[0], meta)
    if value is None:
        raise ConfigError(f"{path}: must not be null; expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        return _parse_dataclass(path, value, tp)
    if origin in (dict, Dict):
        ktp, vtp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_short(value)}")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{path}: keys must be strings, got {_short(k)}")
            out[k] = _parse(f"{path}.{_key(k)}", v, vtp, meta if not dataclasses.is_dataclass(vtp) else {})
        return out
    return _check_scalar(path, value, tp, meta)


def _parse_dataclass(path: str, value: Any, cls: type) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {_short(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in value if k not in fields]
    if unknown:
        where = path or "config"
        raise ConfigError(f"{where}: unknown key {_short(unknown[0])}; allowed keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _parse(f"{path}.{name}" if path else name, value[name], hints[name], dict(f.metadata))
    return cls(**kwargs)


def config_from_dict(d: Dict[str, Any]) -> RunConfig:
    return _parse_dataclass("", d, RunConfig)


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def effective_config_dict(cfg: RunConfig) -> Dict[str, Any]:
    """``config_to_dict`` without the settings that cannot change what a run trains: the rest of
    ``train.adversarial`` when its method is ``none``. Two runs that differ only there are the same run
    (e.g. a run saved before a default of that section changed)."""
    d = config_to_dict(cfg)
    adv = d["train"]["adversarial"]
    if adv["method"] == "none":
        d["train"]["adversarial"] = {"method": "none"}
    return d


def parse_set_item(
    item: str,
    *,
    form: str = "key.path=value",
    example: str = "train.epochs=5",
    depth: Optional[int] = None,
    error: type = ConfigError,
) -> Tuple[List[str], Any]:
    """One ``--set`` item, ``"a.b.c=value"`` -> ``(["a", "b", "c"], value)``: the one ``--set`` dialect.

    The value is parsed as YAML (``5`` int, ``1e-3`` float, ``true`` bool, ``[1, 2]`` list, ``null``,
    an empty value is null, anything else a string), with the safe loader. ``depth``: the exact number
    of key parts required (attacks: 2, ``ATTACK.KEY``). Errors are one line, raised as ``error``."""
    key, sep, raw = item.partition("=")
    parts = [p.strip() for p in key.strip().split(".")]
    if not sep or not all(parts) or (depth is not None and len(parts) != depth):
        raise error(f"--set {_short(item)}: expected {form}, e.g. {example}")
    try:
        value = _yaml_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        msg = f"--set {_key(key.strip())}: cannot parse value {_short(raw)}: {' '.join(str(exc).split())}"
        raise error(msg) from None
    return parts, value


def parse_set_items(items: Sequence[str], **kwargs: Any) -> Dict[str, Any]:
    """``["pgd.steps=50", "masking.large_eps=128"]`` -> ``{"pgd": {"steps": 50}, "masking": {"large_eps": 128}}``.

    Items are parsed by :func:`parse_set_item` (same keyword arguments: ``form``, ``example``, ``depth``,
    ``error``); a later item for the same key wins. Training applies its items one by one to the config
    (:func:`apply_overrides`); attacks take this nested dict as their parameters."""
    error = kwargs.get("error", ConfigError)
    out: Dict[str, Any] = {}
    for item in items:
        parts, value = parse_set_item(item, **kwargs)
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise error(f"--set {_key('.'.join(parts))}: {_short(p)} was set to a value, not a mapping")
            node = nxt
        node[parts[-1]] = value
    return out


def check_like(path: str, value: Any, default: Any, error: type = ConfigError) -> Any:
    """``value`` checked against the type of ``default`` with the config schema's own checks and
    messages (bool: true/false; int: an integer; float: any number, returned as float; str: a
    string); a ``None`` default takes any value. For parameters without a dataclass schema (attacks)."""
    if default is None:
        return value
    tp = next((t for t in (bool, int, float, str) if isinstance(default, t)), None)
    if tp is None:
        return value
    try:
        return _check_scalar(path, value, tp, {})
    except ConfigError as exc:
        raise error(str(exc)) from None


def apply_overrides(d: Dict[str, Any], overrides: list[str]) -> Dict[str, Any]:
    """Apply ``key.path=value`` strings (value parsed as YAML, :func:`parse_set_item`) to a raw config dict."""
    d = copy.deepcopy(d)
    for item in overrides:
        parts, value = parse_set_item(item)
        key = ".".join(parts)
        node = d
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {_key(key)}: {_short(p)} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return d


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    raw: Dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found; see configs/ for examples")
        try:
            raw = _yaml_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read it ({exc.strerror or exc})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys")
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
