"""Shared fixtures: a tiny, learnable fake CIFAR-10, a tiny-config factory and a quick trainer.

The fake CIFAR-10 is written in the official ``cifar-10-batches-py`` layout (five training batches
and a test batch, pickled dicts of a uint8 (N, 3072) array and a list of int labels), so the real
loader, its safe unpickler and the decoded-array cache are all exercised. Every image is a noisy
grey background with one blob whose colour depends on the class: a small conv net learns it in a
few dozen SGD steps, so accuracy tests can demand clearly-above-chance numbers.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from tinyrobust.config import config_from_dict, dump_config
from tinyrobust.data import cifar10

N_TRAIN_PER_BATCH = 30  # 5 batches -> 150 training images
N_TEST = 50  # -> 200 images in all

# one distinct, saturated colour per class (RGB, 0..255)
CLASS_COLOURS = np.array(
    [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [255, 0, 255],
        [0, 255, 255],
        [255, 128, 0],
        [128, 0, 255],
        [0, 0, 0],
        [255, 255, 255],
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


@pytest.fixture(scope="module")
def one_thread_per_module():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread_per_module")``):
    two threads on a shared 2-core machine are ~100x slower at small batches (spin-waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
        "model": {
            "name": "qnn",
            "quant": {"weight": "int4", "act": "int4", "first_weight": "int8", "last_weight": "int8"},
        },
        "train": {"epochs": 2, "batch_size": 25, "lr": 0.05, "warmup_epochs": 0.0, "threads": 1, "augment": False},
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


def fake_checks(accs):
    """A stand-in for the adversarial loop's per-epoch PGD check (``train.loop.robust_check``) that
    returns these robust accuracies in turn, the first round(acc * n) images robust."""
    accs = iter(accs)

    def fake_check(model, x, y, **kw):
        acc, n = next(accs), len(y)
        k = round(acc * n)
        return {
            "n": n,
            "eps": kw["eps"],
            "steps": kw["steps"],
            "clean_accuracy": 0.9,
            "robust_accuracy": acc,
            "robust_ci95": [acc, acc],
            "robust_flags": "1" * k + "0" * (n - k),
        }

    return fake_check


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


# ---------------------------------------------------------------- fake Speech Commands (official layout)
# Shared by test_speech.py and test_reproduce.py (tests share helpers here, never by importing each other).

SPEECH_UNKNOWN_WORDS = ["bed", "cat"]
SPEECH_PER_WORD = 4  # clip index -> split: 0, 1 train; 2 validation; 3 test


def write_wav(path: Path, samples, rate: int = 16000, channels: int = 1, width: int = 2) -> Path:
    import wave

    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(samples)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data.astype("<i2" if width == 2 else np.uint8).tobytes())
    return path


def tone(freq: float, n: int = 16000, amp: float = 0.5, seed: int = 0) -> np.ndarray:
    t = np.arange(n) / 16000
    rng = np.random.default_rng(seed)
    x = amp * np.sin(2 * np.pi * freq * t) + 0.2 * amp * np.sin(2 * np.pi * 2.5 * freq * t)
    x = x * np.hanning(n) + 0.01 * rng.standard_normal(n)
    return np.round(x * 32767).astype(np.int16)


def make_speech_folder(data_dir: Path) -> dict:
    """The official layout in ``data_dir/speech_commands_v0.02``; returns what each split must hold."""
    from tinyrobust.data import speech_commands as sc

    root = data_dir / sc.FOLDER
    splits = {"train": [], "validation": [], "test": []}
    which = {0: "train", 1: "train", 2: "validation", 3: "test"}
    for i, word in enumerate(sc.WORDS + SPEECH_UNKNOWN_WORDS):
        for k in range(SPEECH_PER_WORD):
            rel = f"{word}/{k:08x}_nohash_{k}.wav"
            write_wav(root / rel, tone(200 + 90 * i + 7 * k, n=16000 - 1000 * (k % 2), seed=10 * i + k))
            splits[which[k]].append(rel)
    short = "yes/5hort000_nohash_0.wav"  # half a second: zero-padded to 1 s
    write_wav(root / short, tone(1000, n=8000, seed=99))
    splits["test"].append(short)
    rng = np.random.default_rng(7)
    write_wav(root / sc.BACKGROUND_DIR / "white_noise.wav", rng.integers(-8000, 8000, 48000))  # 4 windows
    write_wav(root / sc.BACKGROUND_DIR / sc.VALIDATION_NOISE, rng.integers(-3000, 3000, 40000))  # 3 windows
    (root / sc.BACKGROUND_DIR / "README.md").write_text("not a wav\n")
    (root / sc.VALIDATION_LIST).write_text("".join(p + "\n" for p in splits["validation"]))
    (root / sc.TESTING_LIST).write_text("".join(p + "\n" for p in reversed(splits["test"])))  # order ignored
    (root / "LICENSE").write_text("CC BY 4.0\n")
    return {"root": root, "short": short, **{s: sorted(v) for s, v in splits.items()}}


# ---------------------------------------------------------------- synthetic robustness.json (schema 2)
# Shared by the report tests (test_report_compare.py, test_report_render.py, test_report_pareto.py).

REPORT_EPS = [2.0, 8.0]
REPORT_CLEAN = "1111111110"  # 9 clean-correct of 10


def cascade_strings(clean: str, breaks: dict, order: list, cascade: bool = True) -> dict:
    """Outcome strings per attack from the images each attack breaks (if it gets to try them)."""
    alive = {i for i, c in enumerate(clean) if c == "1"}
    out = {}
    for a in order:
        s = []
        for i, c in enumerate(clean):
            if c == "0":
                s.append("0")
            elif i not in alive:
                s.append(".")
            else:
                s.append("0" if i in breaks.get(a, set()) else "1")
        if cascade:
            alive -= set(breaks.get(a, set()))
        out[a] = "".join(s)
    return out


def attack_family(name: str) -> str:
    return (
        "black"
        if name == "square" or name.startswith("transfer")
        else ("ensemble" if name == "autoattack" else "white")
    )


def make_res(
    clean: str,
    breaks: dict,
    order: list,
    *,
    eps=REPORT_EPS,
    indices=None,
    cascade: bool = True,
    skipped: dict | None = None,
    params: dict | None = None,
    masked: bool = False,
    sha: str = "a" * 64,
    surrogates: dict | None = None,
) -> dict:
    """A schema-2 robustness.json; ``breaks`` is {attack: images it breaks} or {attack: {eps: images}}."""
    n = len(clean)
    attacks = {}
    per_eps = {}
    for e in eps:
        b = {a: (v.get(e, set()) if isinstance(v, dict) else v) for a, v in breaks.items()}
        per_eps[e] = cascade_strings(clean, b, order, cascade)
    for a in order:
        attacks[a] = {
            "family": attack_family(a),
            "params": (params or {}).get(a, {"steps": 10}),
            "results": {
                f"{e:g}": {"robust_accuracy": per_eps[e][a].count("1") / n, "robust": per_eps[e][a]} for e in eps
            },
        }
    return {
        "schema": 2,
        "meta": {
            "model_sha256": sha,
            "surrogates": surrogates or {},
            "subset": {"split": "test", "n": n, "seed": 0, "indices": list(indices or range(100, 100 + n))},
            "threat_model": "L-inf in [0, 1] pixel space",
        },
        "n": n,
        "clean_accuracy": clean.count("1") / n,
        "clean_correct": clean,
        "eps": list(eps),
        "attacks": attacks,
        "cascade": list(order) if cascade else None,
        "attack_order": list(order),
        "skipped": dict(skipped or {}),
        "masking_checks": {
            "passed": not masked,
            "verdict": "gradient masking suspected: failed x" if masked else "no sign of gradient masking",
            "checks": [{"check": "white_box_beats_black_box", "passed": not masked, "detail": "d"}],
        },
        "notes": [],
    }


# ---------------------------------------------------------------- run-folder helpers (test_train, test_adversarial)

# metric fields that are a pure function of (config, seed); the rest are timings
DETERMINISTIC = (
    "epoch",
    "train_loss",
    "train_ce",
    "train_jr_penalty",
    "jr_estimates",
    "train_accuracy",
    "test_accuracy",
    "lr_end",
)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def deterministic(rows: list[dict]) -> list[dict]:
    return [{k: r[k] for k in DETERMINISTIC} for r in rows]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


class _Crash(Exception):
    pass


def crash_after_epoch(monkeypatch, trainer, run_dir: Path, /, *, crash_epoch: int = 1, **sections: Any) -> None:
    """Run ``trainer(run_dir, **sections)`` (the ``train_tiny`` factory) and crash it right after the
    checkpoint of ``crash_epoch`` is written, as a kill would; the folder keeps what the run wrote."""
    from tinyrobust.train import loop

    real_save = loop.save_checkpoint

    def save_then_crash(path, state):
        real_save(path, state)
        if state["epoch"] == crash_epoch:
            raise _Crash

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    try:
        with pytest.raises(_Crash):
            trainer(run_dir, **sections)
    finally:
        monkeypatch.setattr(loop, "save_checkpoint", real_save)


def shipped_grid_with_tiny_budget(name: str, attack_n: int = 8) -> Dict[str, Any]:
    """The shipped reproduce grid ``name`` (same models, attacks and roles) as a dict, with one
    seconds-scale budget ``tiny`` (1 epoch, every attack a few steps or queries)."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    grid = yaml.safe_load((repo / "configs" / "reproduce" / f"{name}.yaml").read_text())
    grid.setdefault("base", {}).setdefault("train", {}).update(threads=1, batch_size=8)
    grid["budgets"] = {
        "tiny": {
            "epochs": 1,
            "attack_n": attack_n,
            "cascade": True,
            "attack_params": {
                "pgd": {"steps": 2},
                "apgd": {"steps": 2},
                "bpda": {"steps": 2},
                "autoattack": {"steps": 2, "n_target_classes": 2, "square_queries": 10},
                "square": {"queries": 10},
                "masking": {"few_steps": 2, "many_steps": 3},
            },
        }
    }
    return grid


def batch(n=8, seed=0):
    """A seeded batch of CIFAR-10-shaped images in [0, 1] and labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def statistics(model):
    """Every running statistic: BatchNorm buffers and Brevitas runtime-statistics scales."""
    from tinyrobust.train.checkpoint import quant_runtime_state

    bufs = {k: v.clone() for k, v in model.named_buffers()}
    return bufs, {k: (s["counter"], s["buffer"].clone()) for k, s in quant_runtime_state(model).items()}


def same_statistics(a, b):
    (ba, qa), (bb, qb) = a, b
    return all(torch.equal(ba[k], bb[k]) for k in ba) and all(
        qa[k][0] == qb[k][0] and torch.equal(qa[k][1], qb[k][1]) for k in qa
    )
