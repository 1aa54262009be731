"""How closely our log-mel front end reproduces the shared JPEG set, on the clips present in both.

Usage: TINYROBUST_DATA=/path/to/datasets python benchmarks/logmel_frontend.py
       [--out benchmarks/results/logmel_frontend.json]

The official test WAVs (speech_commands_test_set_v0.02) and the JPEG set's testing list share most
word clips: ``<word>/<speaker>_nohash_<n>.wav`` is ``<word>/<speaker>_nohash_<n>.<word>.jpg`` and
``_unknown_/<word>_<speaker>_nohash_<n>.wav.wav`` is ``unknown/<speaker>_nohash_<n>.<word>.jpg``
(``_silence_`` clips have no JPEG). For each matched clip: Pearson correlation over the 98x40 pixels
between ``LogMelFrontend(wav)`` and the JPEG (both in [0, 1]), and the mean absolute difference in
pixel levels. Reported: mean and quantiles over clips, per class, and the least-squares gain/offset
that would best map ln(mel) to the JPEG pixels (a check of the constants, not used by the front end).
Also checked: no speaker of the test WAVs appears in the JPEG set's train or validation split.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tinyrobust import paths
from tinyrobust.data import speech_logmel as sl
from tinyrobust.data.logmel_frontend import LOG_GAIN, LOG_OFFSET, MEL_FLOOR, PIXEL_MAX, logmel_images
from tinyrobust.data.speech_commands import CLASSES, UNKNOWN


def jpeg_name(wav: Path) -> str | None:
    """The JPEG set's relative path for an official test WAV, None for ``_silence_``."""
    folder, name = wav.parent.name, wav.name.removesuffix(".wav").removesuffix(".wav")
    if folder == UNKNOWN:
        word, rest = name.split("_", 1)
        return f"{sl.UNKNOWN_DIR}/{rest}.{word}.jpg"
    if folder in CLASSES[:10]:
        return f"{folder}/{name}.{folder}.jpg"
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/logmel_frontend.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    data_dir = paths.data_dir(None)
    folder, tar = data_dir / sl.FOLDER, data_dir / sl.ARCHIVE
    src = sl._JpegSource(folder if folder.is_dir() else tar)
    splits = sl.split_members(src.images, src.lists, str(src.path))
    clips, y, files, origin = sl.read_test_wavs(data_dir)
    names = [jpeg_name(f) for f in files]
    in_test = set(splits["test_jpeg"])
    matched = [i for i, n in enumerate(names) if n in in_test]
    jpeg = src.read([names[i] for i in matched], "decoding matched JPEGs").astype(np.float64) / PIXEL_MAX
    ours = logmel_images(clips[matched])[:, 0].astype(np.float64)
    corr = np.array([np.corrcoef(o.ravel(), j.ravel())[0, 1] for o, j in zip(ours, jpeg)])
    # the same without center_clip: the official clips as stored (recording, then zero padding at the end)
    raw = np.zeros((len(matched), 16000), np.int16)
    for k, i in enumerate(matched):
        s = sl.read_wav(files[i])[:16000]
        raw[k, : len(s)] = s
    raw_img = logmel_images(raw)[:, 0].astype(np.float64)
    corr_raw = np.array([np.corrcoef(o.ravel(), j.ravel())[0, 1] for o, j in zip(raw_img, jpeg)])
    corr_raw = np.nan_to_num(corr_raw, nan=0.0)
    mae = np.abs(ours - jpeg).mean(axis=(1, 2)) * PIXEL_MAX
    labels = y[matched]

    # least-squares check of the constants on unclipped pixels: JPEG pixel ~ gain * ln(mel) + offset
    with torch.no_grad():
        x = torch.from_numpy(clips[matched].astype(np.float32) / 32768.0)
        from tinyrobust.data.logmel_frontend import LogMelFrontend

        fe = LogMelFrontend()
        frames = x.unfold(1, 480, 160) * fe.window
        mag = torch.fft.rfft(frames, n=512, dim=-1).abs()
        logmel = torch.log(mag @ fe.mel + MEL_FLOOR).numpy().astype(np.float64)
    px = jpeg * PIXEL_MAX
    keep = (px > 5) & (px < 250)
    gain, offset = np.polyfit(logmel[keep], px[keep], 1)

    train_spk = {sl.speaker_of(r) for s in ("train", "validation") for r in splits[s]} - {None}
    wav_spk = {sl.speaker_of(f.name.split("_", 1)[1] if f.parent.name == UNKNOWN else f.name) for f in files} - {None}
    leaked = sorted(wav_spk & train_spk)

    per_class = {}
    for c in sorted(set(labels.tolist())):
        m = labels == c
        per_class[CLASSES[c]] = {
            "n": int(m.sum()),
            "mean_corr": float(corr[m].mean()),
            "min_corr": float(corr[m].min()),
            "mae_levels": float(mae[m].mean()),
        }
    q = np.quantile(corr, [0.01, 0.05, 0.5])
    command = "python benchmarks/logmel_frontend.py"
    result = {
        "command": command,
        "wav_source": Path(origin.split(" ")[0]).name,
        "jpeg_source": src.path.name,
        "front_end": {"gain": LOG_GAIN, "offset": LOG_OFFSET, "mel_floor": MEL_FLOOR},
        "test_wavs": len(files),
        "matched_clips": len(matched),
        "unmatched_word_clips": int(sum(1 for n in names if n is not None and n not in in_test)),
        "mean_corr": float(corr.mean()),
        "corr_q01_q05_median": [float(v) for v in q],
        "clips_corr_below_0_95": int((corr < 0.95).sum()),
        "mae_levels": float(mae.mean()),
        "mean_corr_without_centering": float(corr_raw.mean()),
        "target_mean_corr": 0.95,
        "meets_target": bool(corr.mean() >= 0.95),
        "fitted_gain_offset": [float(gain), float(offset)],
        "test_wav_speakers": len(wav_spk),
        "test_wav_speakers_in_jpeg_train_or_validation": len(leaked),
        "per_class": per_class,
        "seconds": round(time.time() - t0, 1),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": 1,
        },
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Log-mel front end vs the shared JPEG set",
        "",
        f"Command: `TINYROBUST_DATA=<datasets> {command}`; machine: {result['machine']['processor']}, "
        f"{result['machine']['platform']}, torch {torch.__version__}, 1 thread, {result['seconds']} s.",
        "",
        f"{len(matched)} official test WAVs whose clip is also in the JPEG set's test list "
        f"(of {len(files)}; the 408 `_silence_` clips have no JPEG). Pearson correlation over the 98x40 pixels "
        f"of `LogMelFrontend(wav)` and the JPEG, per clip:",
        "",
        f"- mean **{corr.mean():.4f}** (target >= 0.95: {'met' if corr.mean() >= 0.95 else 'NOT met'}); "
        f"1% / 5% / 50% quantiles {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f}; {int((corr < 0.95).sum())} clips below 0.95",
        f"- mean absolute difference {mae.mean():.2f} pixel levels (JPEG loss included)",
        f"- without `center_clip` (the WAVs as stored, recording then zero padding): mean {corr_raw.mean():.4f}",
        f"- least-squares fit of the JPEG pixels on ln(mel): gain {gain:.2f}, offset {offset:.1f} "
        f"(front end uses {LOG_GAIN:g} and {LOG_OFFSET:g})",
        f"- speakers of the test WAVs found in the JPEG train/validation splits: {len(leaked)} of {len(wav_spk)}",
        "",
        "| class | clips | mean corr | min corr | MAE (levels) |",
        "|---|---:|---:|---:|---:|",
    ]
    md += [
        f"| {k} | {v['n']} | {v['mean_corr']:.4f} | {v['min_corr']:.3f} | {v['mae_levels']:.2f} |"
        for k, v in per_class.items()
    ]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md), file=sys.stderr)


if __name__ == "__main__":
    main()
