"""The package as a user meets it: the README's example config works as written, layer names in
``quant.overrides`` are the module paths ``tinyrobust eval`` prints, the version lives in one place,
the shipped configs are package data, and the declared dependencies keep the optional extras optional."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest

import tinyrobust
from tinyrobust.config import LayerQuant, QuantConfig, load_config
from tinyrobust.data import dataset_info
from tinyrobust.errors import ConfigError
from tinyrobust.models import build_model
from tinyrobust.models.base import plan_layers
from tinyrobust.resources import configs_dir, shipped_configs
from tinyrobust.runs import model_for_config
from tinyrobust.train.jacobian import check_jr_layers

REPO = Path(__file__).resolve().parents[1]


def readme_training_yaml() -> str:
    """The yaml block of README.md's "A training run" section, exactly as a user would copy it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### A training run", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match, "README.md: no ```yaml block in the section 'A training run'"
    return match.group(1)


def build_for(cfg):
    return model_for_config(cfg)[0]


def test_readme_example_config_works_as_written(tmp_path):
    path = tmp_path / "readme.yaml"
    path.write_text(readme_training_yaml(), encoding="utf-8")
    cfg = load_config(path)
    model = build_for(cfg)
    plan = {name: (p.weight, p.act) for name, p in model.plan.items()}
    overridden = set(cfg.model.quant.overrides)
    assert overridden and overridden <= set(plan)  # the README names layers by their module paths
    for name in overridden:
        assert plan[name][0] == cfg.model.quant.overrides[name].weight
    assert plan[model.weight_layers[0]][0] == cfg.model.quant.first_weight
    assert plan[model.weight_layers[-1]][0] == cfg.model.quant.last_weight
    assert check_jr_layers(model, cfg.jr.layers)  # its per-block JR names exist too


def test_evals_layer_names_are_what_overrides_take():
    cfg = load_config(None, ["model.quant.weight=int4"])
    model = build_for(cfg)
    rows = model.layer_table(dataset_info(cfg.data.dataset).input_shape)
    assert [r["layer"] for r in rows] == model.weight_layers  # what `tinyrobust eval` prints
    for layer in model.weight_layers:
        q = QuantConfig(weight="int4", act="int4", overrides={layer: LayerQuant(weight="binary")})
        m = build_model("qnn", num_classes=10, input_shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, quant=q)
        assert [n for n, p in m.plan.items() if p.weight == "binary"] == [layer]


@pytest.mark.parametrize("model", ["qnn", "mlc_resnet8"])
def test_override_by_module_path_or_short_name(model):
    def plan_with(name):
        q = QuantConfig(weight="int8", act="int8", overrides={name: LayerQuant(weight="ternary", act="int2")})
        return build_model(
            model, num_classes=10, input_shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, quant=q
        ).plan

    short, path = {"qnn": ("block3", "blocks.block3.conv"), "mlc_resnet8": ("stem", "stem.conv")}[model]
    by_path = plan_with(path)
    assert by_path == plan_with(short)
    assert (by_path[path].weight, by_path[path].act) == ("ternary", "int2")
    assert sum(p.weight == "ternary" for p in by_path.values()) == 1


def test_unknown_or_doubled_override_lists_the_module_paths():
    layers, paths = ["block1", "fc"], ["blocks.block1.conv", "fc"]
    with pytest.raises(ConfigError, match=r"overrides\.block9: no such layer; layers are: blocks\.block1\.conv, fc$"):
        plan_layers(QuantConfig(overrides={"block9": LayerQuant(weight="int4")}), layers, paths)
    both = {"block1": LayerQuant(weight="int4"), "blocks.block1.conv": LayerQuant(weight="int2")}
    with pytest.raises(ConfigError, match="names the same layer as another override"):
        plan_layers(QuantConfig(overrides=both), layers, paths)


def test_version_lives_in_one_place():
    assert tinyrobust.__version__ == version("tinyrobust")
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" in meta["project"]["dynamic"] and "version" not in meta["project"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tinyrobust.__version__"}


def test_shipped_configs_are_package_data():
    names = shipped_configs()
    assert {"qnn_int4_jr.yaml", "demo_tiny.yaml", "reproduce/cifar10.yaml"} <= set(names)
    from tinyrobust.reproduce.pipeline import grid_path

    assert grid_path("cifar10") == configs_dir("reproduce") / "cifar10.yaml"
    for name in names:  # every shipped run config loads (grids are checked in test_reproduce.py)
        if "/" not in name:
            load_config(configs_dir() / name)


def test_dependencies_keep_extras_optional_and_torch_on_the_pin():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {Requirement(r).name: Requirement(r) for r in meta["dependencies"]}
    extras = meta["optional-dependencies"]
    assert {"export", "sweep", "dev"} <= set(extras)
    optional = {Requirement(r).name for name in ("export", "sweep") for r in extras[name]}
    assert {"onnx", "onnxruntime", "qonnx", "ray"} <= optional and not optional & set(runtime)
    pins = {
        Requirement(line).name: Requirement(line)
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert pins["torch"].specifier.contains(version("torch").split("+")[0])
    pinned = next(iter(pins["torch"].specifier)).version
    assert runtime["torch"].specifier.contains(pinned)  # `pip install -c constraints.txt .` can be satisfied


# ---------------------------------------------------------------- shared helpers (rundir, io_utils, inference)


def test_run_lock_is_exclusive_and_released(tmp_path):
    from tinyrobust.errors import RunLocked
    from tinyrobust.rundir import LOCK_FILE, run_lock

    with run_lock(tmp_path / "run"):
        with pytest.raises(RunLocked, match="being written by another tinyrobust process"):
            with run_lock(tmp_path / "run"):
                pass
    with run_lock(tmp_path / "run"):  # released
        pass
    assert (tmp_path / "run" / LOCK_FILE).is_file()


def test_summary_weights_and_records(tmp_path):
    import hashlib
    import json

    import torch

    from tinyrobust.errors import CheckpointError
    from tinyrobust.io_utils import sha256_file
    from tinyrobust.rundir import SUMMARY_FILE, WEIGHTS_FILE, is_finished, load_weights, read_summary, save_weights
    from tinyrobust.rundir import versions as record_versions

    assert read_summary(tmp_path) == {} and not is_finished(tmp_path)
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({"test_accuracy": 0.5}))
    assert read_summary(tmp_path) == {"test_accuracy": 0.5} and is_finished(tmp_path)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    save_weights(tmp_path / WEIGHTS_FILE, a)
    load_weights(tmp_path / WEIGHTS_FILE, b)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_weights(tmp_path / WEIGHTS_FILE, torch.nn.Linear(3, 4))
    assert sha256_file(tmp_path / WEIGHTS_FILE) == hashlib.sha256((tmp_path / WEIGHTS_FILE).read_bytes()).hexdigest()
    rec = record_versions(("torch", "no-such-package-xyz"))
    assert rec["tinyrobust"] == tinyrobust.__version__ and "torch" in rec and "no-such-package-xyz" not in rec


def test_batched_inference_matches_one_pass_and_restores_mode():
    import torch

    from tinyrobust.inference import batched_accuracy, batched_logits

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)).train()
    x = torch.randn(37, 4)
    out = batched_logits(model, x, batch_size=10)
    assert model.training  # restored
    with torch.no_grad():
        assert torch.allclose(out, model.eval()(x), atol=1e-6)  # eval mode: dropout off
    y = out.argmax(1)
    y[:5] = (y[:5] + 1) % 3
    assert batched_accuracy(model, x, y, batch_size=8) == 32 / 37
