"""Config schema: every bad key, type or value is a ConfigError that starts with the key's path."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyrobust.config import (
    ACT_QUANTS,
    WEIGHT_QUANTS,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
)
from tinyrobust.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_round_trip(tmp_path):
    cfg = config_from_dict({})
    assert cfg == RunConfig()
    assert (cfg.model.name, cfg.model.quant.weight, cfg.train.epochs, cfg.jr.weight) == ("qnn", "float", 10, 0.0)
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig) and cfg.name
    assert load_config(path, ["train.epochs=3"]).train.epochs == 3


def test_nested_sections_parse_to_typed_values():
    cfg = config_from_dict(
        {
            "name": "x1",
            "seed": 7,
            "model": {
                "name": "mlc_resnet8",
                "quant": {
                    "weight": "ternary",
                    "act": "int4",
                    "first_weight": "int8",
                    "overrides": {"stem": {"act": "int8"}},
                },
            },
            "train": {"lr": 1, "augment": None, "max_batches_per_epoch": 3},
            "jr": {"weight": 0.01, "layers": {"stack2": 2}},
        }
    )
    assert cfg.seed == 7 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.quant.overrides["stem"].act == "int8" and cfg.model.quant.overrides["stem"].weight is None
    assert cfg.jr.layers == {"stack2": 2.0} and isinstance(cfg.jr.layers["stack2"], float)
    assert cfg.train.augment is None and cfg.train.max_batches_per_epoch == 3


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"epochs": 0}}, "train.epochs: 0 is out of range; allowed [1, 10000]"),
        ({"train": {"epochs": 2.0}}, "train.epochs: expected an integer, got 2.0"),
        ({"train": {"epochs": True}}, "train.epochs: expected an integer, got True"),
        ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast'"),
        ({"train": {"lr": math.nan}}, "train.lr: expected a finite number"),
        ({"train": {"lr": 10**400}}, "train.lr: expected a finite number"),  # int too large for a float
        ({"train": {"lr": -0.1}}, "train.lr: -0.1 is out of range; allowed [0.0, 10.0]"),
        ({"train": {"nesterov": "yes"}}, "train.nesterov: expected true or false, got 'yes'"),
        ({"train": {"optimizer": "lbfgs"}}, "train.optimizer: 'lbfgs' is not allowed; choose one of: sgd, adam"),
        ({"train": {"epoch": 3}}, "train: unknown key 'epoch'; allowed keys: epochs, batch_size,"),
        ({"trian": {}}, "config: unknown key 'trian'; allowed keys: name, seed, data, model, train, jr"),
        ({"train": 5}, "train: expected a mapping, got 5"),
        ({"model": None}, "model: must not be null; expected mapping"),
        (
            {"model": {"quant": {"weight": "int9"}}},
            "model.quant.weight: 'int9' is not allowed; choose one of: " + ", ".join(WEIGHT_QUANTS),
        ),
        (
            {"model": {"quant": {"act": "ternary"}}},
            "model.quant.act: 'ternary' is not allowed; choose one of: " + ", ".join(ACT_QUANTS),
        ),
        (
            {"model": {"quant": {"overrides": {"block1": {"weight": "int1"}}}}},
            "model.quant.overrides.block1.weight: 'int1' is not allowed",
        ),
        (
            {"model": {"quant": {"overrides": {"block1": {"bits": 4}}}}},
            "model.quant.overrides.block1: unknown key 'bits'; allowed keys: weight, act",
        ),
        ({"model": {"quant": {"overrides": {3: {}}}}}, "model.quant.overrides: keys must be strings, got 3"),
        ({"model": {"quant": {"overrides": []}}}, "model.quant.overrides: expected mapping of str -> mapping"),
        ({"jr": {"layers": {"block1": -1}}}, "jr.layers.block1: -1.0 is out of range"),
        ({"jr": {"n_proj": 0}}, "jr.n_proj: 0 is out of range; allowed [1, 1000]"),
        ({"data": {"train_subset": 5}}, "data.train_subset: 5 is out of range; allowed [10, inf]"),
        ({"seed": -1}, "seed: -1 is out of range"),
        ({"name": "../../etc"}, "name: '../../etc' is not allowed; use 1-100 letters"),
        ({"name": ""}, "name: '' is not allowed"),
        ({"name": "a/b"}, "name: 'a/b' is not allowed"),
        ([1, 2], "config: expected a mapping, got [1, 2]"),
    ],
)
def test_bad_values_name_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_long_values_are_cut_in_messages():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": {"quant": {"weight": "x" * 10_000}}})
    assert len(str(err.value)) < 400 and str(err.value).startswith("model.quant.weight: 'xxx")


# ---------------------------------------------------------------- --set overrides


def test_set_overrides_are_yaml_scalars():
    cfg = config_from_dict(
        apply_overrides(
            {"train": {"epochs": 2}},
            [
                "train.epochs=5",
                "train.lr=1e-3",
                "train.augment=false",
                "train.max_batches_per_epoch=null",
                "model.quant.weight=int4",
                "model.quant.overrides.block2.act=int2",
                "jr.layers={block1: 0.5}",
                "name=a=b",
            ],
        )
    )
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.001 and cfg.train.augment is False
    assert cfg.train.max_batches_per_epoch is None
    assert cfg.model.quant.weight == "int4" and cfg.model.quant.overrides["block2"].act == "int2"
    assert cfg.jr.layers == {"block1": 0.5}
    assert cfg.name == "a=b"


def test_scientific_notation_in_yaml_files(tmp_path):
    # YAML 1.1 (PyYAML) reads 5e-4 as a string; configs are YAML 1.2-style here
    p = tmp_path / "c.yaml"
    p.write_text("train: {lr: 5e-4, weight_decay: 1E-5}\njr: {weight: -0.0e+0}\n")
    cfg = load_config(p)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.jr.weight) == (5e-4, 1e-5, 0.0)


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.epochs", "--set 'train.epochs': expected key.path=value"),
        ("train.epochs=[1", "--set train.epochs: cannot parse value '[1'"),
        ("train.epochs.x=1", "--set train.epochs.x: 'epochs' is not a mapping"),
        ("train.epochs=many", "train.epochs: expected an integer, got 'many'"),
        ("model.quant.weight=int9", "model.quant.weight: 'int9' is not allowed"),
        ("train.epocs=3", "train: unknown key 'epocs'"),
        ("name=!!python/object/apply:os.system [echo]", "--set name: cannot parse value"),
    ],
)
def test_set_errors(item, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(apply_overrides({"train": {"epochs": 2}}, [item]))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"train: {epochs: [", "not valid YAML"),
        (b"- a\n- b\n", "the top level must be a mapping"),
        (b"\xff\xfe\x00binary", "not a UTF-8 text file"),
        (b"name: !!python/object/apply:os.system ['touch PWNED']\n", "not valid YAML"),
    ],
)
def test_bad_config_files(tmp_path, monkeypatch, content, message):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "bad.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(err.value).startswith(f"{p}: {message}") and "\n" not in str(err.value)
    assert not (tmp_path / "PWNED").exists()


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found; see configs/"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)  # a folder


# ---------------------------------------------------------------- property test

SCHEMA_KEYS = {
    "": ["name", "seed", "data", "model", "train", "jr"],
    "data": ["dataset", "data_dir", "train_subset", "test_subset"],
    "model": ["name", "quant"],
    "model.quant": ["weight", "act", "first_weight", "last_weight", "overrides"],
    "train": [f.name for f in dataclasses.fields(RunConfig().train)],
    "jr": ["weight", "n_proj", "layers"],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-3, 20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2, 12),
    st.text(max_size=12),
    st.sampled_from(WEIGHT_QUANTS + ["int9", "int1", "Ternary", "int4 "]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def config_like(draw):
    """Mostly-schema-shaped dicts: real keys with random values, plus junk keys, at every level."""

    def section(prefix):
        out = {}
        for key in draw(st.lists(st.sampled_from(SCHEMA_KEYS[prefix]), unique=True, max_size=4)):
            sub = f"{prefix}.{key}" if prefix else key
            if sub in SCHEMA_KEYS and draw(st.booleans()):
                out[key] = section(sub)
            elif sub in ("model.quant.overrides", "jr.layers") and draw(st.booleans()):
                keys = st.one_of(st.sampled_from(["block1", "fc", "x.y", ""]), st.text(max_size=4))
                out[key] = draw(st.dictionaries(keys, values, max_size=2))
            else:
                out[key] = draw(values)
        if draw(st.integers(0, 9)) == 0:
            out[draw(st.one_of(st.text(max_size=5), st.integers()))] = draw(values)
        return out

    return section("")


def _key_paths(d, prefix=""):
    """Every key path in ``d``, a key written as is or, if unprintable, as its repr()."""
    yield prefix or "config"
    if isinstance(d, dict):
        for k, v in d.items():
            for name in {str(k), repr(k)}:
                yield from _key_paths(v, f"{prefix}.{name}" if prefix else name)


def _check_valid(obj, path=""):
    """Every field of a parsed config has its declared type and honours its choices and range."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        where = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(v):
            _check_valid(v, where)
            continue
        items = v.items() if isinstance(v, dict) else [(None, v)]
        for _, item in items:
            if dataclasses.is_dataclass(item):
                _check_valid(item, where)
                continue
            if item is None:
                assert type(None) in typing.get_args(hints[f.name]), where
                continue
            meta = f.metadata
            if meta.get("choices"):
                assert item in meta["choices"], where
            if meta.get("lo") is not None:
                assert item >= meta["lo"], where
            if meta.get("hi") is not None:
                assert item <= meta["hi"], where
            if isinstance(item, float):
                assert math.isfinite(item), where


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_like())
def test_property_valid_config_or_config_error_at_a_key_path(raw):
    try:
        cfg = config_from_dict(raw)
    except ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg
        assert any(msg.startswith(p + ": ") for p in _key_paths(raw)), msg
        return
    assert isinstance(cfg, RunConfig)
    _check_valid(cfg)
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=25), max_size=4))
def test_property_set_items_never_crash(items):
    try:
        cfg = config_from_dict(apply_overrides({}, items))
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(cfg, RunConfig)
