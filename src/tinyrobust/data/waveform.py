"""The waveform-domain threat model for the log-mel keyword models (issue 14).

Two threat models apply to a model trained on ``speech_commands_logmel``:

- feature domain: L-inf on the [0, 1] log-mel pixels the model takes (what the grid attacks; eps k/255
  is k pixel levels, 0.43k dB of mel magnitude);
- waveform domain (here): L-inf on the 16-bit samples of the 1 s clip, which is what a physical
  attacker controls. The clip is the model input, as (N, 1, 1, 16000) floats in [0, 1] =
  ``(sample + 32768) / 65535``, so the attack code's [0, 1] box and its eps in 1/255 units still
  apply: eps k/255 = k * 257 sample units. ``WaveformModel`` maps that input through the
  differentiable ``LogMelFrontend`` into the trained log-mel model: white-box attacks backpropagate
  through the front end; black-box attacks query WAV in, label out (``classify_wav`` rounds to
  16-bit samples first, as a real WAV file would be).

``convert_eps`` converts budgets between 16-bit sample units, the attack code's 1/255 units and dB
below the clip's peak (``20 log10(peak / eps)``, as audio attack papers state it, e.g. Carlini &
Wagner 2018). Dataset ``speech_commands_wav`` holds the official test clips (centered as in
``speech_logmel.center_clip``) in these [0, 1] waveform units; it has only a test split.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import DataError
from .datasets import ArrayDataset, DatasetInfo, cached, register_dataset
from .logmel_frontend import CLIP_SAMPLES, INT16_SCALE, LogMelFrontend
from .speech_commands import CLASSES

SAMPLE_OFFSET = 32768.0  # unit = (sample + SAMPLE_OFFSET) / SAMPLE_RANGE
SAMPLE_RANGE = 65535.0  # int16 span: -32768 -> 0, 32767 -> 1
SAMPLES_PER_255TH = SAMPLE_RANGE / 255.0  # 257 sample units per eps step of 1/255
UNITS = ("samples", "eps255", "db")

WAV_INFO = DatasetInfo(
    name="speech_commands_wav",
    num_classes=len(CLASSES),
    input_shape=(1, 1, CLIP_SAMPLES),
    mean=(0.5,),  # unused: the waveform is fed to WaveformModel, not to a model's Normalize
    std=(0.5,),
    kind="audio",
    augment=False,
    splits=("test",),
    feature_range=(-SAMPLE_OFFSET, SAMPLE_RANGE - SAMPLE_OFFSET),  # 16-bit sample units
)


def samples_to_unit(samples: np.ndarray | torch.Tensor):
    """int16 samples -> [0, 1] waveform units."""
    return (samples + SAMPLE_OFFSET) / SAMPLE_RANGE


def unit_to_samples(unit):
    """[0, 1] waveform units -> sample units (float; round to get a WAV)."""
    return unit * SAMPLE_RANGE - SAMPLE_OFFSET


def convert_eps(eps: float, src: str, dst: str, peak: float | None = None) -> float:
    """An L-inf waveform budget from unit ``src`` to ``dst``, units: ``samples`` (16-bit sample units),
    ``eps255`` (the attack code's eps, k/255 of the [0, 1] box: k * 257 samples) and ``db`` (dB below
    the clip's ``peak`` absolute sample value: ``20 log10(peak / eps_samples)``; needs ``peak``)."""
    for u in (src, dst):
        if u not in UNITS:
            raise ValueError(f"unknown eps unit {u!r}; choose one of: {', '.join(UNITS)}")
    if "db" in (src, dst) and not (peak and peak > 0):
        raise ValueError("converting to or from dB below the peak needs the clip's peak sample value (> 0)")
    samples = {
        "samples": lambda v: v,
        "eps255": lambda v: v * SAMPLES_PER_255TH,
        "db": lambda v: peak * 10 ** (-v / 20),
    }[src](float(eps))
    if dst == "samples":
        return samples
    if dst == "eps255":
        return samples / SAMPLES_PER_255TH
    return float(20 * np.log10(peak / samples))


class WaveformModel(nn.Module):
    """[0, 1] waveform (N, 1, 1, 16000) -> ``LogMelFrontend`` -> a trained log-mel ``model`` -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.frontend = LogMelFrontend()
        self.model = model

    @property
    def stochastic(self) -> bool:
        return bool(getattr(self.model, "stochastic", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wave = unit_to_samples(x.reshape(x.shape[0], -1)) / INT16_SCALE  # [-1, 1) as the front end takes
        return self.model(self.frontend(wave))


@torch.no_grad()
def classify_wav(model: WaveformModel, samples: np.ndarray) -> np.ndarray:
    """Black-box query, WAV in -> label out: int16-rounded samples (N, 16000) -> predicted classes."""
    s = np.clip(np.rint(np.asarray(samples, dtype=np.float64)), -32768, 32767)
    x = torch.from_numpy(samples_to_unit(s).astype(np.float32)).reshape(len(s), 1, 1, -1)
    was = model.training
    model.eval()
    out = model(x).argmax(1).numpy()
    model.train(was)
    return out


def load_waveform_run(run_dir: str | Path) -> WaveformModel:
    """A run trained on ``speech_commands_logmel``, wrapped to take [0, 1] waveforms."""
    from ..runs import load_run

    run = load_run(run_dir)
    if run.cfg.data.dataset != "speech_commands_logmel":
        raise DataError(
            f"{run_dir} was trained on {run.cfg.data.dataset!r}; the waveform threat model needs a "
            "speech_commands_logmel run"
        )
    return WaveformModel(run.model).eval()


def eps_db_below_peak(waves: np.ndarray, eps_samples: list[float]) -> dict[str, dict[str, float]]:
    """Each eps (16-bit sample units) in dB below the peak of every clip (``waves``: [0, 1] units, any
    shape (N, ...)), summarised over the clips as median and 10th/90th percentile, keyed by ``f"{eps:g}"``.
    Audio attack papers state budgets this way; a quiet clip puts the same eps fewer dB below its peak."""
    flat = unit_to_samples(np.asarray(waves, dtype=np.float64).reshape(len(waves), -1))
    peaks = np.maximum(np.abs(flat).max(axis=1), 1.0)  # a digitally silent clip counts as peak 1 sample
    out = {}
    for e in eps_samples:
        db = 20 * np.log10(peaks / float(e))
        q10, q50, q90 = np.percentile(db, [10, 50, 90])
        out[f"{e:g}"] = {"median": round(float(q50), 1), "p10": round(float(q10), 1), "p90": round(float(q90), 1)}
    return out


@register_dataset(WAV_INFO)
def load_speech_commands_wav(split: str, data_dir: Path, download: bool) -> ArrayDataset:
    """The official test clips as [0, 1] waveforms (N, 1, 1, 16000); only a test split exists."""
    from . import speech_logmel as sl

    if split != "test":  # load_dataset already refuses; kept for direct callers
        raise DataError(
            f"speech_commands_wav only has a test split (the official test WAVs), not {split!r}; "
            "train on speech_commands_logmel"
        )
    root, origin = sl._test_root(data_dir)
    files = [f for f, _ in sl.test_wav_files(root)]

    def build() -> ArrayDataset:
        clips, y, _, _ = sl.read_test_wavs(data_dir)
        x = samples_to_unit(clips.astype(np.float32)).astype(np.float32)[:, None, None, :]
        return ArrayDataset(
            WAV_INFO.name,
            "test",
            x,
            y,
            list(CLASSES),
            f"{origin} (official Speech Commands v0.02 12-class test WAVs, centered, as [0, 1] waveforms)",
        )

    return replace(cached(WAV_INFO.name, f"test-v{sl.TEST_VERSION}", files, build), split="test")


def attack_waveform(
    run_dir: str | Path,
    attacks: list[str],
    eps_samples: list[float],
    n: int = 100,
    seed: int = 0,
    data_dir: str | None = None,
    **kw,
) -> dict:
    """Attack a ``speech_commands_logmel`` run in the waveform domain (eps in 16-bit sample units):
    the attack code's ``run_attacks`` on ``WaveformModel`` and the official test clips; returns its
    result with ``meta.eps_samples`` and the eps in the attack code's 1/255 units."""
    from ..attacks.runner import run_attacks
    from .datasets import load_dataset
    from .loader import stratified_subset, to_tensors

    model = load_waveform_run(run_dir)
    ds = load_dataset(WAV_INFO.name, "test", data_dir)
    idx = np.asarray(stratified_subset(ds.y, min(n, len(ds.y)), seed))
    x, y = to_tensors(ds, idx)
    eps = [convert_eps(e, "samples", "eps255") for e in eps_samples]
    res = run_attacks(model, x.numpy(), y.numpy(), attacks, eps, seed=seed, **kw)
    res.setdefault("meta", {}).update(
        {
            "threat_model": "waveform L-inf on 16-bit samples",
            "eps_samples": list(eps_samples),
            "eps255": eps,
            "subset_indices": idx.tolist(),
        }
    )
    return res
