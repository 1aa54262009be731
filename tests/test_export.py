"""Export to ONNX (QCDQ) / QONNX, the file verified against PyTorch, the exported file as a black-box
classifier, and the memory footprint. Tiny models on random data: seconds, one CPU thread."""

from __future__ import annotations

import argparse
import functools
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyrobust.config import DataConfig, ModelConfig, QuantConfig, RunConfig, dump_config
from tinyrobust.errors import ExportError
from tinyrobust.export import (
    OnnxClassifierModule,
    cli_command,
    export_model,
    exported_model_accuracy,
    footprint_table,
    format_footprint,
    onnx_export,
    onnx_predict_fn,
    reference_footprints,
    verify_export,
    weight_support,
)
from tinyrobust.models import MODELS, build_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("qonnx")

SHAPE = (3, 16, 16)  # qnn is fully convolutional + global pool: small inputs keep tests fast


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


def warm_model(
    name="qnn", weight="int4", act="int4", shape=SHAPE, classes=10, first="int8", last="int8", steps=40, seed=0
):
    """A model whose BN statistics and activation scales were initialised by train-mode passes."""
    torch.manual_seed(seed)
    first = None if weight == "float" else first
    last = None if weight == "float" else last
    m = build_model(
        name,
        num_classes=classes,
        input_shape=shape,
        mean=(0.5,) * shape[0],
        std=(0.25,) * shape[0],
        quant=QuantConfig(weight=weight, act=act, first_weight=first, last_weight=last),
    )
    m.train()
    with torch.no_grad():
        for _ in range(steps):
            m(torch.rand(4, *shape))
    return m.eval()


@functools.lru_cache(maxsize=None)
def cached_model(weight, act):
    return warm_model(weight=weight, act=act)


def random_inputs(n=32, shape=SHAPE, seed=1):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def graph_ops(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _const(model, name):
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def clip_ranges(path):
    """(min, max) of every integer Clip in a QCDQ file: the N-bit grids it expresses."""
    m = onnx.load(str(path))
    out = set()
    for n in m.graph.node:
        if n.op_type == "Clip" and len(n.input) == 3:
            lo, hi = _const(m, n.input[1]), _const(m, n.input[2])
            if lo is not None and hi is not None and lo.dtype.kind in "iu":
                out.add((int(lo), int(hi)))
    return out


def quant_bit_widths(path):
    """bit widths of the QONNX Quant nodes."""
    m = onnx.load(str(path))
    return {int(_const(m, n.input[3])) for n in m.graph.node if n.op_type == "Quant"}


# ---------------------------------------------------------------- export + verification


@pytest.mark.parametrize(
    "weight,act,fmt",
    [
        ("int4", "int4", "onnx"),
        ("int4", "int4", "qonnx"),
        ("ternary", "int3", "onnx"),
        ("ternary", "int3", "qonnx"),
        ("ternary_stats", "int4", "onnx"),
        ("ternary_stats", "int4", "qonnx"),
        ("stochastic_ternary", "int2", "onnx"),
        ("binary", "int4", "qonnx"),
        ("float", "float", "onnx"),
        ("float", "float", "qonnx"),
    ],
)
def test_export_matches_pytorch(tmp_path, weight, act, fmt):
    m = cached_model(weight, act)
    path = export_model(m, tmp_path / f"m.{fmt}.onnx", fmt, SHAPE)
    x = random_inputs()
    r = verify_export(m, path, x, fmt=fmt)
    assert r["n"] == 32
    # float rounding can move a value that sits on a quantization boundary to the next level
    # (PyTorch itself does between batch sizes), so demand near-identity, not bit-identity
    assert r["agreement"] >= 0.95 and r["mean_abs_logit_diff"] < 1e-3
    if weight == "float" and act == "float":
        assert r["max_abs_logit_diff"] < 1e-4
    ops = graph_ops(path)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["tinyrobust.format"] == fmt
    if weight == "float":
        assert not ops & {"Quant", "BipolarQuant", "QuantizeLinear", "DequantizeLinear"}  # plain ONNX
    elif fmt == "onnx":
        assert {"DequantizeLinear", "QuantizeLinear", "Clip"} <= ops and "Quant" not in ops
        wmax = 1 if "ternary" in weight else 2 ** (int(weight[3:]) - 1) - 1
        amax = 2 ** int(act[3:]) - 1
        assert {(-wmax, wmax), (-127, 127), (0, amax)} <= clip_ranges(path)  # int8 first/last layers
    else:
        assert "Quant" in ops and "QuantizeLinear" not in ops
        bits = {"int4": 4, "ternary": 2, "ternary_stats": 2, "binary": None}[weight]
        assert quant_bit_widths(path) >= {8, int(act[3:])} | ({bits} if bits else set())
        assert ("BipolarQuant" in ops) == (weight == "binary")


def test_onnx_has_dynamic_batch_and_qonnx_batch_one(tmp_path):
    m = cached_model("int4", "int4")
    a = onnx.load(str(export_model(m, tmp_path / "a.onnx", "onnx", SHAPE)))
    b = onnx.load(str(export_model(m, tmp_path / "b.onnx", "qonnx", SHAPE)))
    dims = lambda mp: [d.dim_param or d.dim_value for d in mp.graph.input[0].type.tensor_type.shape.dim]  # noqa: E731
    assert dims(a) == ["batch", *SHAPE]
    assert dims(b) == [1, *SHAPE]


def test_binary_weights_cannot_be_qcdq(tmp_path):
    m = cached_model("binary", "int4")
    out = tmp_path / "bin.onnx"
    with pytest.raises(ExportError, match=r"layer 'blocks\.block2\.conv'.*'binary'.*--format qonnx"):
        export_model(m, out, "onnx", SHAPE)
    assert not out.exists() and not list(tmp_path.iterdir())
    assert weight_support("binary", "onnx") is None and "BipolarQuant" in weight_support("binary", "qonnx")
    for q in ("float", "int2", "int8", "ternary", "ternary_stats", "stochastic_ternary"):
        assert weight_support(q, "onnx") and weight_support(q, "qonnx")


def test_export_leaves_model_untouched_and_formats_independent(tmp_path):
    m = cached_model("int4", "int4")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    export_model(m, tmp_path / "a.onnx", "onnx", SHAPE)
    q = export_model(m, tmp_path / "b.onnx", "qonnx", SHAPE)
    assert "Quant" in graph_ops(q) and "QuantizeLinear" not in graph_ops(q)
    assert not m.training
    assert all(getattr(sub, "export_handler", None) is None for sub in m.modules())
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_export_after_a_failed_brevitas_export(tmp_path):
    """A failed Brevitas export leaves its handlers on the model, and Brevitas never replaces a
    handler: a later QONNX export of the same object would reuse the QCDQ ones and fail."""
    from brevitas.export import export_onnx_qcdq

    m = warm_model(weight="binary", steps=2)
    with pytest.raises(AssertionError, match="Binary quant not supported"):
        export_onnx_qcdq(m, torch.rand(1, *SHAPE), export_path=str(tmp_path / "raw.onnx"), dynamo=False)
    m.eval()
    assert any(getattr(sub, "export_handler", None) is not None for sub in m.modules())  # stale handlers
    q = export_model(m, tmp_path / "b.onnx", "qonnx", SHAPE)
    assert "BipolarQuant" in graph_ops(q)


def test_unknown_format(tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model(cached_model("int4", "int4"), tmp_path / "x", "tflite", SHAPE)


@pytest.mark.parametrize("missing,fmt", [("qonnx", "qonnx"), ("onnxruntime", "onnx"), ("onnx", "onnx")])
def test_missing_dependency_names_package(tmp_path, monkeypatch, missing, fmt):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` fail
    with pytest.raises(ExportError, match=rf"optional package {missing}: pip install 'tinyrobust\[export\]'"):
        export_model(cached_model("int4", "int4"), tmp_path / "m.onnx", fmt, SHAPE)


def test_predict_fn_without_onnxruntime(tmp_path, monkeypatch):
    path = export_model(cached_model("int4", "int4"), tmp_path / "m.onnx", "onnx", SHAPE)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match=r"package onnxruntime: pip install 'tinyrobust\[export\]'"):
        onnx_predict_fn(path)


# ---------------------------------------------------------------- exported file as a classifier


@pytest.mark.parametrize("fmt", ["onnx", "qonnx"])
def test_predict_fn_batches_and_accuracy(tmp_path, fmt):
    m = cached_model("int4", "int4")
    path = export_model(m, tmp_path / "m.onnx", fmt, SHAPE)
    x = random_inputs(11).numpy()
    full = onnx_predict_fn(path)(x)  # format detected from the graph
    chunked = onnx_predict_fn(path, batch_size=4)(x)  # 4 + 4 + 3 (padded for qonnx)
    assert full.shape == (11, 10) and full.dtype == np.float32
    np.testing.assert_allclose(chunked, full, atol=1e-5)
    assert onnx_predict_fn(path)(x[:0]).shape == (0, 10)
    with pytest.raises(ValueError, match="expects input of shape"):
        onnx_predict_fn(path)(np.zeros((2, 3, 8, 8), np.float32))
    y = full.argmax(1)
    assert exported_model_accuracy(path, x, y) == 1.0
    assert exported_model_accuracy(path, torch.from_numpy(x), torch.from_numpy((y + 1) % 10)) == 0.0

    module = OnnxClassifierModule(path)
    out = module(torch.from_numpy(x))
    assert isinstance(out, torch.Tensor) and torch.allclose(out, torch.from_numpy(full), atol=1e-5)
    with pytest.raises(ExportError, match="no gradients"):
        module(torch.from_numpy(x).requires_grad_(True))


def test_predict_fn_bad_file(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        onnx_predict_fn(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file at all")
    with pytest.raises(ExportError):
        onnx_predict_fn(bad)


# ---------------------------------------------------------------- footprint


def test_footprint_resnet8_float_by_hand():
    m = build_model("mlc_resnet8", num_classes=10, input_shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    fp = footprint_table(m, (3, 32, 32), input_bits=32, name="mlc_resnet8")
    # conv weights: stem 3*16*9, stack1 2x 16*16*9, stack2 16*32*9 + 32*32*9 + 1x1 16*32,
    # stack3 32*64*9 + 64*64*9 + 1x1 32*64, dense 64*10 + 10 biases; BN: 2 * (16+16+16+32+32+64+64)
    conv = 432 + 2 * 2304 + 4608 + 9216 + 512 + 18432 + 36864 + 2048 + 640 + 10
    bn = 2 * (16 * 3 + 32 * 2 + 64 * 2)
    assert (conv, bn) == (77370, 480)
    assert fp["parameters"] == 77850 == conv + bn and fp["layer_parameters"] == conv
    assert fp["bn_parameters"] == bn and fp["quantizer_parameters"] == 0
    # 32-bit floats: conv/dense weights and the fc bias, plus one folded 32-bit bias per BatchNorm channel
    # (the 240 channels of the seven BNs; the shortcuts have no BN); float layers have no weight scales
    folded = 16 * 3 + 32 * 2 + 64 * 2
    assert fp["weight_kb"] == pytest.approx((conv + folded) * 4 / 1024)  # 303.2 KB
    assert fp["weight_kb_bare"] == pytest.approx(conv * 4 / 1024)  # 302.2 KB: weights and own biases only
    assert round(fp["weight_kb"], 1) == 303.2 and round(fp["weight_kb_bare"], 1) == 302.2
    stem = fp["layers"][0]
    assert (stem["layer"], stem["params"], stem["weight_bits"]) == ("stem.conv", 432, 32)
    assert stem["output_shape"] == [16, 32, 32]
    assert stem["weight_kb"] == pytest.approx((432 + 16) * 4 / 1024) and stem["act_kb"] == pytest.approx(64.0)
    assert fp["peak_act_kb"] == pytest.approx(64.0) and fp["peak_act_layer"] == "stem.conv"
    assert fp["input_kb"] == pytest.approx(12.0)
    assert fp["double_buffer_kb"] == pytest.approx(128.0)  # stem out + stack1.c1 out, 64 KB each
    assert fp["weight_scale_kb"] == 0 and fp["bn_fold_kb"] == pytest.approx(folded * 4 / 1024)
    shortcut = next(r for r in fp["layers"] if r["layer"] == "stack2.shortcut")
    assert shortcut["weight_kb"] == shortcut["weight_kb_bare"] == pytest.approx(16 * 32 * 4 / 1024)  # no BN after it
    assert "largest single layer output" in fp["definitions"]["peak_act_kb"]


def test_footprint_quantized_bits():
    m = cached_model("int4", "int4")
    fp = footprint_table(m, SHAPE)
    first, block2, fc = fp["layers"][0], fp["layers"][1], fp["layers"][-1]
    assert (first["weight_bits"], block2["weight_bits"], fc["weight_bits"]) == (8, 4, 8)
    # 4-bit weights, one 32-bit scale per output channel, and the folded BatchNorm's 32-bit bias per channel
    assert block2["weight_kb_bare"] == pytest.approx(32 * 32 * 9 * 4 / 8 / 1024)
    assert block2["weight_kb"] == pytest.approx((32 * 32 * 9 * 4 / 8 + 32 * 4 + 32 * 4) / 1024)
    assert fc["weight_kb"] == pytest.approx((fc["params"] - 10 + 10 * 4 + 10 * 4) / 1024)  # int8, bias, scales
    assert fp["weight_kb"] == pytest.approx(fp["weight_kb_bare"] + fp["weight_scale_kb"] + fp["bn_fold_kb"])
    assert first["act_bits"] == 4 and first["act_kb"] == pytest.approx(32 * 16 * 16 * 4 / 8 / 1024)
    assert fc["act_bits"] == 32  # logits
    assert fp["input_kb"] == pytest.approx(3 * 16 * 16 / 1024)
    assert fp["double_buffer_kb"] >= fp["peak_act_kb"] > 0
    assert fp["quantizer_parameters"] > 0  # Brevitas' learned activation scales
    text = format_footprint(fp)
    assert "peak activation" in text and "double buffer" in text and "1 KB = 1024 bytes" in text


def test_reference_footprints_and_missing_reference(monkeypatch):
    refs = reference_footprints()
    by = {(r["model"], r["precision"]): r for r in refs}
    assert by[("mlc_resnet8", "float")]["parameters"] == 77850
    # 77,360 int8 weights, 10 fc biases, 240 folded BN biases and 346 per-channel scales (32-bit each)
    assert by[("mlc_resnet8", "int8")]["weight_kb"] == pytest.approx((77360 + (10 + 240 + 346) * 4) / 1024)
    assert by[("mlc_resnet8", "int8")]["weight_kb_bare"] == pytest.approx((77360 + 40) / 1024)
    assert by[("mlc_resnet8", "int8")]["peak_act_kb"] == pytest.approx(16.0)
    if "mlc_dscnn" in MODELS:  # appears automatically once registered
        d = by[("mlc_dscnn", "float")]
        assert "skipped" not in d and d["input_shape"] == [1, 49, 10] and d["layers"][-1]["output_shape"] == [12]
    monkeypatch.delitem(MODELS._items, "mlc_dscnn", raising=False)
    refs = reference_footprints()
    skipped = [r for r in refs if r["model"] == "mlc_dscnn"]
    assert len(skipped) == 2 and all("not registered" in r["skipped"] for r in skipped)
    fp = footprint_table(cached_model("int4", "int4"), SHAPE, name="qnn")
    text = format_footprint(fp, refs)
    assert "mlc_resnet8" in text and "mlc_dscnn" in text and "skipped" in text and "qnn (this)" in text


# ---------------------------------------------------------------- CLI on a run directory


def write_fake_cifar_test(data_dir: Path, n: int = 60, seed: int = 0) -> None:
    """The official python-batch layout; only ``test_batch`` (the export reads the test split)."""
    from tinyrobust.data import cifar10

    rng = np.random.default_rng(seed)
    folder = data_dir / cifar10.BATCHES_DIR
    folder.mkdir(parents=True)
    labels = [int(v) for v in np.arange(n) % 10]
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=4))


@pytest.fixture
def make_run(tmp_path, monkeypatch):
    from tinyrobust.data import dataset_info
    from tinyrobust.train.checkpoint import save_weights

    monkeypatch.setenv("TINYROBUST_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TINYROBUST_CACHE", str(tmp_path / "cache"))
    write_fake_cifar_test(tmp_path / "data")
    info = dataset_info("cifar10")

    def make(weight="int4", act="int4", name="run"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        quant = QuantConfig(weight=weight, act=act, first_weight="int8", last_weight="int8")
        cfg = RunConfig(name=name, data=DataConfig(dataset="cifar10"), model=ModelConfig(name="qnn", quant=quant))
        torch.manual_seed(0)
        m = build_model(
            "qnn", num_classes=info.num_classes, input_shape=info.input_shape, mean=info.mean, std=info.std, quant=quant
        )
        m.train()
        with torch.no_grad():
            for _ in range(32):
                m(torch.rand(2, *info.input_shape))
        save_weights(run_dir / "model.safetensors", m.eval())
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        return run_dir

    return make


def own_cli(argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    assert cli_command.add_parsers(sub) == ["export", "footprint"]
    args = p.parse_args(argv)
    return cli_command.COMMANDS[args.command](args)


def test_cli_export_onnx_writes_verified_file(make_run, capsys):
    from tinyrobust.cli import main

    run_dir = make_run()
    assert main(["export", "--run", str(run_dir), "--n", "30", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "top-1 agreement with PyTorch" in text and "largest |logit difference|" in text
    out = run_dir / "model.onnx"
    rec = json.loads((run_dir / "model.onnx.verify.json").read_text())
    assert out.is_file() and rec["passed"] and rec["format"] == "onnx" and rec["n"] == 30
    assert rec["agreement"] >= 0.995 and rec["max_abs_logit_diff"] < 0.5
    assert rec["subset"] == {"split": "test", "n": 30, "requested": 30, "seed": 0, "method": "stratified"}
    assert {"onnxruntime", "brevitas", "torch", "onnx"} <= set(rec["versions"])
    import hashlib

    assert rec["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.slow  # over 5 s on the 2-core machine (--durations)
def test_cli_export_qonnx_and_footprint(make_run, capsys, tmp_path):
    run_dir = make_run()
    out = tmp_path / "deploy" / "net.onnx"
    assert (
        own_cli(
            [
                "export",
                "--run",
                str(run_dir),
                "--format",
                "qonnx",
                "--out",
                str(out),
                "--n",
                "200",
                "--threads",
                "1",
                "--json",
            ]
        )
        == 0
    )
    rec = json.loads((out.parent / "net.onnx.verify.json").read_text())
    assert json.loads(capsys.readouterr().out)["sha256"] == rec["sha256"]
    assert rec["format"] == "qonnx" and rec["n"] == 60 and rec["subset"]["requested"] == 200  # capped at the split
    assert rec["runtime"].startswith("qonnx") and rec["agreement"] >= 0.995
    assert "Quant" in graph_ops(out)

    assert own_cli(["footprint", "--run", str(run_dir), "--json"]) == 0
    fp = json.loads(capsys.readouterr().out)
    assert fp["model"] == "qnn" and fp["input_bits"] == 8 and len(fp["layers"]) == 6
    assert {r["model"] for r in fp["references"]} >= {"mlc_resnet8"}
    p = argparse.ArgumentParser()
    assert cli_command.add_parser(p.add_subparsers(dest="command")) == "export"  # cli.py's one-command protocol
    ns = argparse.Namespace(command="footprint", run=str(run_dir), json=False, no_references=True)
    assert cli_command.run(ns) == 0  # run() dispatches on args.command
    text = capsys.readouterr().out
    assert "peak activation" in text and "references" not in text


def test_cli_binary_run_to_onnx_fails_cleanly(make_run, capsys):
    from tinyrobust.cli import main

    run_dir = make_run(weight="binary", name="bin")
    assert main(["export", "--run", str(run_dir), "--n", "20", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "blocks.block2.conv" in err and "binary" in err and "--format qonnx" in err
    assert not (run_dir / "model.onnx").exists()


@pytest.mark.slow  # over 5 s on the 2-core machine (--durations)
def test_cli_export_fails_when_file_disagrees(make_run, capsys, monkeypatch):
    from tinyrobust.cli import main

    real = onnx_export.onnx_predict_fn

    def broken(path, **kw):
        fn = real(path, **kw)
        return lambda x: np.roll(fn(x), 1, axis=1)  # every prediction moves to another class

    monkeypatch.setattr(onnx_export, "onnx_predict_fn", broken)
    run_dir = make_run()
    assert main(["export", "--run", str(run_dir), "--n", "20", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "disagrees with PyTorch" in err and "0.00% < 99.50%" in err and "was not written" in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "model.safetensors"]
