"""The log-mel front end of the shared Speech Commands JPEG set, in torch and differentiable.

The JPEG set (``speech_commands_v0.02_logmel_jpeg``, see ``speech_logmel.py``) holds 98x40 8-bit
images with no audio and no documented front end; its README measured the mapping against the
official WAVs, and this module implements exactly that mapping, so a WAV can be turned into the
same input the log-mel models were trained on:

- samples scaled to [-1, 1) (int16 / 32768; no per-clip peak normalisation);
- 30 ms periodic Hann windows (480 samples) at a 10 ms hop (160), no padding: 98 frames per 1 s;
- magnitude of the 512-point FFT, 40 HTK-mel triangles from 20 to 4000 Hz (the same weights as the
  MFCC pipeline's ``speech_commands.mel_matrix``, i.e. ``tf.signal.linear_to_mel_weight_matrix``);
- pixel = ``LOG_GAIN * ln(mel + MEL_FLOOR) + LOG_OFFSET`` (20 ln(mel) + 139), clipped to 0..255;
- output ``pixel / 255`` in [0, 1], shape (N, 1, 98, 40): rows are frames (time runs down), columns
  mel bins from low to high, the orientation of the JPEGs.

The JPEG compression of the shared images is not modelled (it is lossy noise, about 6 levels mean
absolute error); ``benchmarks/logmel_frontend.py`` measures how close the mapping is (correlation
with the shared JPEGs of the same clips). One pixel level is 1/20 neper of mel magnitude, i.e.
20 log10(e)/20 = 0.43 dB.

Why torch and not numpy: the waveform-domain threat model (``data/waveform.py``) backpropagates
through this front end. The clip to 0..255 has zero gradient where it is active (silence floor,
very loud bins), as the deployed front end would; attacks see that honestly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .speech_commands import mel_matrix

SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000
WINDOW = 480  # 30 ms
HOP = 160  # 10 ms
FFT_LENGTH = 512
NUM_MEL = 40
MEL_LOW_HZ, MEL_HIGH_HZ = 20.0, 4000.0
NUM_FRAMES = 1 + (CLIP_SAMPLES - WINDOW) // HOP  # 98
LOG_GAIN = 20.0  # pixel levels per neper of mel magnitude (measured, datasets README)
LOG_OFFSET = 139.0  # pixel level of mel magnitude 1 (measured)
MEL_FLOOR = 1e-6  # keeps log finite: 20 ln(1e-6) + 139 = -137, far below pixel 0
PIXEL_MAX = 255.0
INT16_SCALE = 32768.0  # sample units per unit of the [-1, 1) waveform


def mel_center_hz() -> np.ndarray:
    """Center frequency (Hz) of each of the 40 mel triangles (HTK mel scale)."""
    lo, hi = (1127.0 * np.log1p(f / 700.0) for f in (MEL_LOW_HZ, MEL_HIGH_HZ))
    mels = np.linspace(lo, hi, NUM_MEL + 2)[1:-1]
    return 700.0 * np.expm1(mels / 1127.0)


class LogMelFrontend(nn.Module):
    """Waveform in [-1, 1) -> log-mel image in [0, 1], (N, 1, 98, 40); differentiable.

    Accepts (N, 16000), (N, 1, 16000) or (N, 1, 1, 16000); clips shorter than 1 s are zero-padded
    at the end (as the official clips are), longer ones cut."""

    def __init__(self):
        super().__init__()
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)  # periodic Hann
        self.register_buffer("window", torch.tensor(window, dtype=torch.float32), persistent=False)
        self.register_buffer("mel", torch.tensor(mel_matrix(), dtype=torch.float32), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave.reshape(wave.shape[0], -1).to(torch.float32)
        if x.shape[1] < CLIP_SAMPLES:
            x = nn.functional.pad(x, (0, CLIP_SAMPLES - x.shape[1]))
        x = x[:, :CLIP_SAMPLES]
        frames = x.unfold(1, WINDOW, HOP) * self.window  # (N, 98, 480)
        spec = torch.fft.rfft(frames, n=FFT_LENGTH, dim=-1)
        # |X| via sqrt(re^2 + im^2 + tiny): finite gradient at an exactly zero bin (digital silence)
        mag = torch.sqrt(spec.real.square() + spec.imag.square() + 1e-20)
        pixels = LOG_GAIN * torch.log(mag @ self.mel + MEL_FLOOR) + LOG_OFFSET
        return (pixels.clamp(0.0, PIXEL_MAX) / PIXEL_MAX).unsqueeze(1)


_FRONTEND: LogMelFrontend | None = None


@torch.no_grad()
def logmel_images(samples: np.ndarray, batch: int = 256) -> np.ndarray:
    """int16 clips (N, 16000) -> float32 (N, 1, 98, 40) in [0, 1]: the front end without gradients,
    for building datasets (same code path as the differentiable one)."""
    global _FRONTEND
    if _FRONTEND is None:
        _FRONTEND = LogMelFrontend()
    samples = np.asarray(samples)
    out = [
        _FRONTEND(torch.from_numpy(samples[i : i + batch].astype(np.float32) / INT16_SCALE)).numpy()
        for i in range(0, len(samples), batch)
    ]
    return np.concatenate(out) if out else np.zeros((0, 1, NUM_FRAMES, NUM_MEL), np.float32)
