"""Shared fixtures: a tiny, learnable fake CIFAR-10, a tiny-config factory and a quick trainer.

The fake CIFAR-10 is written in the official ``cifar-10-batches-py`` layout (five training batches
and a test batch, pickled dicts of a uint8 (N, 3072) array and a list of int labels), so the real
loader, its safe unpickler and the decoded-array cache are all exercised. Every image is a noisy
grey background with one blob whose colour depends on the class: a small conv net learns it in a
few dozen SGD steps, so accuracy tests can demand clearly-above-chance numbers.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyrobust.config import config_from_dict, dump_config
from tinyrobust.data import cifar10

N_TRAIN_PER_BATCH = 30  # 5 batches -> 150 training images
N_TEST = 50  # -> 200 images in all

# one distinct, saturated colour per class (RGB, 0..255)
CLASS_COLOURS = np.array(
    [
        [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255],
        [0, 255, 255], [255, 128, 0], [128, 0, 255], [0, 0, 0], [255, 255, 255],
    ],
    dtype=np.float32,
)


def blob_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 32, 32, 3): grey noise plus a class-coloured disc of radius 9 at a random spot."""
    n = len(labels)
    img = rng.normal(128, 20, (n, 32, 32, 3))
    yy, xx = np.mgrid[:32, :32]
    for i, c in enumerate(labels):
        cy, cx = rng.integers(10, 22, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 81
        img[i][disc] = CLASS_COLOURS[c] + rng.normal(0, 10, (disc.sum(), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_fake_cifar10(data_dir: Path, seed: int = 0) -> Dict[str, tuple]:
    """Write ``data_dir/cifar-10-batches-py``; returns {split: (x NHWC, y)}."""
    rng = np.random.default_rng(seed)
    folder = data_dir / cifar10.BATCHES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    out: Dict[str, Any] = {}
    for split, names in cifar10.BATCHES.items():
        xs, ys = [], []
        for name in names:
            n = N_TRAIN_PER_BATCH if split == "train" else N_TEST
            labels = np.arange(n) % 10  # balanced
            rng.shuffle(labels)
            x = blob_images(labels, rng)
            batch = {
                b"batch_label": name.encode(),
                b"labels": [int(v) for v in labels],
                b"data": x.transpose(0, 3, 1, 2).reshape(n, 3072).copy(),
            }
            (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
            xs.append(x)
            ys.append(labels)
        out[split] = (np.concatenate(xs), np.concatenate(ys).astype(np.int64))
    return out


@pytest.fixture(scope="session")
def _fake_cifar_session(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_cifar")
    data = root / "data"
    arrays = write_fake_cifar10(data)
    return data, root / "cache", arrays


@pytest.fixture
def fake_cifar(_fake_cifar_session, monkeypatch):
    """A ~200-image learnable fake CIFAR-10 (150 train, 50 test); sets TINYROBUST_DATA,
    TINYROBUST_CACHE and TINYROBUST_THREADS=1 (subprocesses inherit them). Returns the data
    directory."""
    data, cache, arrays = _fake_cifar_session
    monkeypatch.setenv("TINYROBUST_DATA", str(data))
    monkeypatch.setenv("TINYROBUST_CACHE", str(cache))
    monkeypatch.setenv("TINYROBUST_THREADS", "1")  # one core, in-process and in subprocesses
    return data


@pytest.fixture
def one_thread():
    """Train on one core (the test machine is shared with long jobs); restores the old count."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_config_dict(**sections: Any) -> Dict[str, Any]:
    """A raw config dict for a seconds-scale run of ``qnn`` on the fake data; keyword arguments
    are merged one level deep, e.g. ``tiny_config_dict(train={"epochs": 3}, jr={"weight": 0.01})``."""
    d: Dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "data": {"dataset": "cifar10"},
        "model": {"name": "qnn", "quant": {"weight": "int4", "act": "int4", "first_weight": "int8",
                                            "last_weight": "int8"}},
        "train": {"epochs": 2, "batch_size": 25, "lr": 0.05, "warmup_epochs": 0.0, "threads": 1,
                  "augment": False},
        "jr": {"weight": 0.0},
    }
    for key, val in sections.items():
        if isinstance(val, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **val}
        else:
            d[key] = val
    return d


@pytest.fixture
def tiny_config():
    """Factory: ``tiny_config(**sections)`` -> a validated RunConfig (see tiny_config_dict)."""
    return lambda **sections: config_from_dict(tiny_config_dict(**sections))


@pytest.fixture
def write_config(tmp_path):
    """Factory: ``write_config(cfg_or_dict, name="cfg.yaml")`` -> path of a YAML config file."""

    def write(cfg, name: str = "cfg.yaml") -> Path:
        path = tmp_path / name
        text = dump_config(cfg if not isinstance(cfg, dict) else config_from_dict(cfg))
        path.write_text(text)
        return path

    return write


@pytest.fixture
def train_tiny(fake_cifar, one_thread, tmp_path):
    """Factory: ``train_tiny(run_dir=None, **sections)`` trains a tiny qnn run in-process
    (progress bars off) and returns (run_dir, summary)."""
    from tinyrobust.train import train_run

    def train(run_dir: Path | None = None, resume: bool = False, **sections):
        cfg = config_from_dict(tiny_config_dict(**sections))
        run_dir = Path(run_dir) if run_dir else tmp_path / "run"
        summary = train_run(cfg, run_dir, resume=resume, progress=False)
        torch.set_num_threads(1)  # train_run sets the thread count from the config
        return run_dir, summary

    return train


class TinyConvNet(nn.Module):
    """A few-hundred-parameter conv net for JR tests (3x8x8 input, 4 classes); quantized with
    tinyrobust's own quantizers when ``weight``/``act`` are not "float". Exposes ``jr_blocks``."""

    def __init__(self, weight: str = "float", act: str = "float", classes: int = 4):
        super().__init__()
        from tinyrobust.quant import conv2d, linear, relu

        self.block1 = nn.Sequential(conv2d(3, 6, 3, weight=weight, bias=True), relu(act))
        self.block2 = nn.Sequential(conv2d(6, 8, 3, 2, weight=weight, bias=True), relu(act))
        self.fc = linear(8 * 4 * 4, classes, weight=weight)

    def jr_blocks(self):
        return {"block1": self.block1, "block2": self.block2}

    def forward(self, x):
        return self.fc(torch.flatten(self.block2(self.block1(x)), 1))


@pytest.fixture
def tiny_net():
    return TinyConvNet


def run_cli(argv, capsys):
    """``tinyrobust <argv>`` in-process -> (exit code, stdout, stderr)."""
    from tinyrobust import cli

    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, prefix):
    """Exit code 2 and exactly one stderr line ``<prefix>: error: ...``, no traceback."""
    assert code == 2, err
    assert err.startswith(prefix + ": error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
