"""The command line: every error a user can cause is one line on stderr, ``tinyrobust <cmd>: error:
...``, with exit code 2 and no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tinyrobust import cli
from tinyrobust.config import WEIGHT_QUANTS
from tinyrobust.errors import ConfigError
from tinyrobust.models import MODELS

from conftest import assert_one_line_error, run_cli, tiny_config_dict


def subcommands() -> list[str]:
    parser, handlers = cli.build_parser()
    return sorted(handlers)


# ---------------------------------------------------------------- usage errors (argparse)


@pytest.mark.parametrize(
    "argv, prefix, message",
    [
        ([], "tinyrobust", "the following arguments are required: command"),
        (["frobnicate"], "tinyrobust", "argument command: invalid choice: 'frobnicate'"),
        (["train", "--bogus", "1"], "tinyrobust train", "unrecognized arguments: --bogus 1"),
        (["eval"], "tinyrobust eval", "the following arguments are required: --run"),
        (["eval", "--run"], "tinyrobust eval", "argument --run: expected one argument"),
    ],
)
def test_usage_errors(capsys, argv, prefix, message):
    code, out, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, prefix)
    assert err.startswith(f"{prefix}: error: {message}") and f"(see {prefix} --help)" in err
    assert out == ""


@pytest.mark.parametrize("cmd", subcommands())
def test_every_command_reports_unknown_options_in_one_line(capsys, cmd):
    code, out, err = run_cli([cmd, "--no-such-option"], capsys)
    assert_one_line_error(code, err, f"tinyrobust {cmd}")
    # argparse reports a missing required option first, else the unknown one
    assert "unrecognized arguments: --no-such-option" in err or "the following arguments are required" in err


@pytest.mark.parametrize("cmd", ["eval", "attack", "export", "footprint"])
def test_commands_on_a_missing_run(capsys, tmp_path, cmd):
    if cmd not in subcommands():
        pytest.skip(f"{cmd} is not registered")
    code, out, err = run_cli([cmd, "--run", tmp_path / "nope"], capsys)
    assert_one_line_error(code, err, f"tinyrobust {cmd}")
    assert f"run directory {tmp_path / 'nope'} does not exist" in err


# ---------------------------------------------------------------- errors from the library


@pytest.fixture
def cfg_file(tmp_path, write_config):
    return write_config(tiny_config_dict(train={"epochs": 1, "max_batches_per_epoch": 1}))


@pytest.mark.parametrize(
    "args, message",
    [
        (["train"], "--config is required (or --resume with a --run-dir that holds config.yaml)"),
        (["train", "--config", "{tmp}/missing.yaml"], "config file {tmp}/missing.yaml not found"),
        (["train", "--config", "{tmp}/bad.yaml"], "{tmp}/bad.yaml: not valid YAML"),
        (["train", "--config", "{tmp}/binary.yaml"], "{tmp}/binary.yaml: not a UTF-8 text file"),
        (
            ["train", "--config", "{cfg}", "--set", "train.epochs=0"],
            "train.epochs: 0 is out of range; allowed [1, 10000]",
        ),
        (["train", "--config", "{cfg}", "--set", "train.epochs"], "--set 'train.epochs': expected key.path=value"),
        (["train", "--config", "{cfg}", "--set", "train.lr=[0.1"], "--set train.lr: cannot parse value '[0.1'"),
        (
            ["train", "--config", "{cfg}", "--set", "model.quant.weight=int9"],
            "model.quant.weight: 'int9' is not allowed; choose one of: " + ", ".join(WEIGHT_QUANTS),
        ),
        (["train", "--config", "{cfg}", "--set", "train.epoch=3"], "train: unknown key 'epoch'; allowed keys: epochs"),
        (
            ["train", "--config", "{cfg}", "--set", "model.name=resnet50", "--run-dir", "{tmp}/r1"],
            "unknown model 'resnet50'; choose one of: " + ", ".join(MODELS.names()),
        ),
        (
            ["train", "--config", "{cfg}", "--set", "data.dataset=cifar11", "--run-dir", "{tmp}/r2"],
            "unknown dataset 'cifar11'; choose one of: ",
        ),
        (
            ["train", "--config", "{cfg}", "--set", "jr.layers.block9=0.1", "--run-dir", "{tmp}/r3"],
            "jr.layers.block9: no such block; blocks are: block1, block2, block3, block4, block5",
        ),
        (
            ["train", "--config", "{cfg}", "--set", "model.quant.overrides.conv1.weight=int4", "--run-dir", "{tmp}/r4"],
            "model.quant.overrides.conv1: no such layer; layers are: blocks.block1.conv, blocks.block2.conv, "
            "blocks.block3.conv, blocks.block4.conv, blocks.block5.conv, fc",
        ),
        (["train", "--config", "{cfg}", "--set", "name=../../escape"], "name: '../../escape' is not allowed"),
        (
            ["train", "--config", "{cfg}", "--run-dir", "{tmp}/bad.yaml/sub"],
            "output folder {tmp}/bad.yaml/sub is not writable",
        ),
        (["eval", "--run", "{tmp}"], "{tmp} is not a run directory: no config.yaml"),
    ],
)
def test_user_errors(fake_cifar, one_thread, tmp_path, capsys, cfg_file, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # a default runs/<name> folder lands here
    (tmp_path / "bad.yaml").write_text("train: {epochs: [\n")
    (tmp_path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    argv = [a.format(tmp=tmp_path, cfg=cfg_file) for a in args]
    code, out, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, f"tinyrobust {argv[0]}")
    assert err.startswith(f"tinyrobust {argv[0]}: error: {message.format(tmp=tmp_path)}"), err
    assert not list(tmp_path.glob("**/checkpoint.pt"))


def test_list(capsys):
    code, out, err = run_cli(["list"], capsys)
    assert code == 0 and err == ""
    assert f"models:             {', '.join(MODELS.names())}" in out
    assert "weight quantizers:  " + ", ".join(WEIGHT_QUANTS) in out


@pytest.mark.slow  # a fresh interpreter that imports torch: 3-7 s on the shared 2-core machine
def test_a_real_process_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tinyrobust.cli", "train", "--config", str(tmp_path / "x.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert (
        proc.stderr.startswith(
            f"tinyrobust train: error: config file {tmp_path / 'x.yaml'} not found (shipped configs: "
        )
        and proc.stderr.count("\n") == 1
    )
    assert "qnn_int4_jr" in proc.stderr and proc.stderr.endswith(")\n")


# the optional extras (export: onnx..., sweep: ray) made unimportable, as in a plain `pip install tinyrobust`;
# runs each argv of the JSON list given in argv[1] and prints [[code, stdout, stderr], ...] as JSON
_WITHOUT_EXTRAS = """
import contextlib, io, json, sys
for m in ("onnx", "onnxruntime", "onnxscript", "onnxoptimizer", "qonnx", "ray"):
    sys.modules[m] = None
from tinyrobust.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_help_list_and_export_without_the_optional_extras(tmp_path):
    import json

    argvs = [["--help"], ["list"], ["export", "--run", str(tmp_path)]]
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    help_, list_, export = json.loads(proc.stdout)
    assert help_[0] == 0 and "reproduce" in help_[1] and help_[2] == ""
    assert list_[0] == 0 and "models:" in list_[1] and "reproduce grids:    cifar10" in list_[1]
    assert export[0] == 2 and export[1] == ""
    assert export[2].startswith("tinyrobust export: error: export to onnx needs the optional packages ")
    assert export[2].endswith(": pip install 'tinyrobust[export]'\n") and export[2].count("\n") == 1


def test_shipped_config_by_name_from_any_folder(tmp_path, monkeypatch):
    from tinyrobust.resources import configs_dir, resolve_config

    monkeypatch.chdir(tmp_path)  # README's `--config configs/qnn_int4_jr.yaml` outside the checkout
    want = configs_dir() / "qnn_int4_jr.yaml"
    assert resolve_config("configs/qnn_int4_jr.yaml") == want
    assert resolve_config("qnn_int4_jr") == want
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "qnn_int4_jr.yaml").write_text("name: mine\n")  # a user's own file wins
    assert resolve_config("configs/qnn_int4_jr.yaml").resolve() == tmp_path / "configs" / "qnn_int4_jr.yaml"
    with pytest.raises(ConfigError, match="config file ../qnn_int4_jr not found"):
        resolve_config("../qnn_int4_jr")
