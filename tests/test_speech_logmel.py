"""speech_commands_logmel (log-mel JPEG set + official test WAVs), the log-mel front end, the waveform
threat model and the 98x40 keyword models, on tiny fake files in the exact official formats."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tinyrobust.config import QuantConfig
from tinyrobust.data import dataset_info, load_dataset
from tinyrobust.data import speech_logmel as sl
from tinyrobust.data import waveform as wf
from tinyrobust.data.logmel_frontend import LogMelFrontend, logmel_images, mel_center_hz
from tinyrobust.data.speech_commands import CLASSES
from tinyrobust.errors import DataError
from tinyrobust.models import build_model

from conftest import shipped_grid_with_tiny_budget, tone, write_wav

torch.set_num_threads(1)


def wave(freq: float, amp: float, seed: int = 0) -> torch.Tensor:
    """conftest's int16 test tone as a (1, 16000) waveform in [-1, 1)."""
    return torch.from_numpy(tone(freq, amp=amp, seed=seed).astype(np.float32) / 32768)[None]


# speaker -> split, as the dataset's hash rule would assign them (any disjoint assignment will do here)
SPEAKERS = {"0a1b2c3d": "train", "11223344": "train", "5e6f7a8b": "validation", "99aabbcc": "test_jpeg"}
WORDS_HERE = ["yes", "no", "left"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TINYROBUST_CACHE", str(cache))
    monkeypatch.delenv("TINYROBUST_DATA", raising=False)
    return cache


def _jpeg(path: Path, seed: int, size=(40, 98), mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    img = Image.fromarray(arr, "L")
    (img.convert(mode) if mode != "L" else img).save(path, "JPEG", quality=90)


def make_logmel_folder(data_dir: Path) -> Path:
    """``speech_commands_v0.02_logmel_jpeg/`` in the shared set's exact layout, tiny."""
    root = data_dir / sl.FOLDER
    lists = {"validation": [], "test_jpeg": []}
    seed = 0
    for spk, split in SPEAKERS.items():
        for word in WORDS_HERE:
            for n in range(2):
                rel = f"{word}/{spk}_nohash_{n}.{word}.jpg"
                _jpeg(root / rel, seed := seed + 1)
                if split in lists:
                    lists[split].append(rel)
        rel = f"unknown/{spk}_nohash_0.marvin.jpg"
        _jpeg(root / rel, seed := seed + 1)
        if split in lists:
            lists[split].append(rel)
    for i in range(3):
        _jpeg(root / "_background_noise_" / f"{51889 + i}_background.jpg", seed := seed + 1)
    (root / "validation_list.txt").write_text("\n".join(lists["validation"]) + "\n")
    (root / "testing_list.txt").write_text("\n".join(lists["test_jpeg"]) + "\n")
    return root


def make_test_wavs(data_dir: Path, per_class: int = 2) -> Path:
    """``speech_commands_test_set_v0.02/`` as the official test-set archive: 12 class folders."""
    root = data_dir / sl.TEST_FOLDER
    (root / "LICENSE").parent.mkdir(parents=True, exist_ok=True)
    (root / "LICENSE").write_text("CC BY 4.0\n")
    (root / "README.md").write_text("test set\n")
    for ci, c in enumerate(CLASSES):
        for n in range(per_class):
            sig = tone(300 + 150 * ci + 40 * n, n=12000 if n else 16000, amp=0.3, seed=ci * 10 + n)
            name = (
                f"{1000 + n}.wav"
                if c == "_silence_"
                else (f"marvin_99aabbcc_nohash_{n}.wav.wav" if c == "_unknown_" else f"99aabbcc_nohash_{n}.wav")
            )
            write_wav(root / c / name, sig)
    return root


@pytest.fixture
def logmel(tmp_path):
    data = tmp_path / "data"
    make_logmel_folder(data)
    make_test_wavs(data)
    return data


# ---------------------------------------------------------------- the JPEG set


def test_splits_labels_values_and_no_speaker_leakage(logmel):
    root = logmel / sl.FOLDER
    seen = {}
    for split in ("train", "validation", "test_jpeg"):
        ds = load_dataset("speech_commands_logmel", split, logmel)
        assert ds.x.dtype == np.float32 and ds.x.shape[1:] == (1, 98, 40)
        assert ds.classes == CLASSES and ds.split == split
        src = sl._JpegSource(root)
        rels = sl.split_members(src.images, src.lists, str(root))[split]
        # pixel / 255 of the decoded JPEG, in the sorted order of the relative paths
        first = np.asarray(Image.open(root / rels[0]), dtype=np.float32) / 255
        np.testing.assert_array_equal(ds.x[0, 0], first)
        want = [
            CLASSES.index("_unknown_")
            if r.startswith("unknown/")
            else CLASSES.index("_silence_")
            if r.startswith("_background_noise_/")
            else CLASSES.index(r.split("/")[0])
            for r in rels
        ]
        assert ds.y.tolist() == want
        seen[split] = {sl.speaker_of(r) for r in rels} - {None}
    assert len(load_dataset("speech_commands_logmel", "train", logmel)) == 2 * (3 * 2 + 1) + 3
    assert (load_dataset("speech_commands_logmel", "train", logmel).y == CLASSES.index("_silence_")).sum() == 3
    for a in seen:
        for b in seen:
            if a != b:
                assert not seen[a] & seen[b], (a, b)
    assert seen["test_jpeg"] == {"99aabbcc"}


def test_archive_with_top_folder_gives_the_same_arrays(logmel, tmp_path):
    data2 = tmp_path / "data2"
    data2.mkdir()
    with tarfile.open(data2 / sl.ARCHIVE, "w:gz") as tf:
        tf.add(logmel / sl.FOLDER, arcname=sl.FOLDER)
    for split in ("train", "validation"):
        a = load_dataset("speech_commands_logmel", split, logmel)
        b = load_dataset("speech_commands_logmel", split, data2)
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)


def test_wrong_size_image_is_one_line_naming_it(logmel):
    bad = logmel / sl.FOLDER / "yes" / "0a1b2c3d_nohash_0.yes.jpg"
    _jpeg(bad, 1, size=(49, 10))
    with pytest.raises(DataError) as e:
        load_dataset("speech_commands_logmel", "train", logmel)
    msg = str(e.value)
    assert "\n" not in msg and "0a1b2c3d_nohash_0.yes.jpg" in msg and "49x10" in msg and "40x98" in msg


def test_rgb_image_is_refused(logmel):
    _jpeg(logmel / sl.FOLDER / "no" / "0a1b2c3d_nohash_1.no.jpg", 1, mode="RGB")
    with pytest.raises(DataError, match="0a1b2c3d_nohash_1.no.jpg.*grayscale"):
        load_dataset("speech_commands_logmel", "train", logmel)


def test_list_naming_a_missing_image_is_one_line_naming_it(logmel):
    (logmel / sl.FOLDER / "yes" / "5e6f7a8b_nohash_1.yes.jpg").unlink()
    with pytest.raises(DataError) as e:
        load_dataset("speech_commands_logmel", "validation", logmel)
    msg = str(e.value)
    assert "\n" not in msg and "validation_list.txt" in msg and "yes/5e6f7a8b_nohash_1.yes.jpg" in msg


def test_leaky_lists_are_refused(logmel):
    lst = logmel / sl.FOLDER / "testing_list.txt"
    lst.write_text(lst.read_text() + "yes/0a1b2c3d_nohash_0.yes.jpg\n")  # one clip of a train speaker
    with pytest.raises(DataError, match="speaker 0a1b2c3d is in both train and test_jpeg"):
        load_dataset("speech_commands_logmel", "train", logmel)


def test_missing_set_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match=sl.ARCHIVE):
        load_dataset("speech_commands_logmel", "train", tmp_path)


# ---------------------------------------------------------------- the official test WAVs


def test_test_split_is_the_official_wavs_through_the_front_end(logmel):
    ds = load_dataset("speech_commands_logmel", "test", logmel)
    assert ds.x.shape == (24, 1, 98, 40) and ds.x.dtype == np.float32
    assert ds.y.tolist() == [c for c in range(12) for _ in range(2)]  # CLASSES.index(folder), _silence_ kept
    root = logmel / sl.TEST_FOLDER
    clip = sl.center_clip(sl.read_wav(root / "_unknown_" / "marvin_99aabbcc_nohash_1.wav.wav"))
    np.testing.assert_array_equal(ds.x[23], logmel_images(clip[None])[0])


def test_center_clip_removes_the_end_padding_and_centers():
    s = np.zeros(16000, np.int16)
    s[:4000] = 7
    c = sl.center_clip(s)
    assert np.flatnonzero(c)[[0, -1]].tolist() == [6000, 9999]
    full = np.arange(1, 16001).astype(np.int16)
    np.testing.assert_array_equal(sl.center_clip(full), full)
    assert not sl.center_clip(np.zeros(16000, np.int16)).any()


def test_test_wavs_from_the_archive(logmel, tmp_path):
    data2 = tmp_path / "d2"
    data2.mkdir()
    with tarfile.open(data2 / sl.TEST_ARCHIVES[0], "w:xz") as tf:
        tf.add(logmel / sl.TEST_FOLDER, arcname=sl.TEST_FOLDER)
    a = load_dataset("speech_commands_logmel", "test", logmel)
    b = load_dataset("speech_commands_logmel", "test", data2)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)


def test_bad_wav_is_the_one_line_error_naming_it(logmel):
    bad = write_wav(logmel / sl.TEST_FOLDER / "yes" / "99aabbcc_nohash_0.wav", tone(440, n=8000), rate=8000)
    with pytest.raises(DataError) as e:
        load_dataset("speech_commands_logmel", "test", logmel)
    assert "\n" not in str(e.value) and str(bad) in str(e.value) and "8000 Hz" in str(e.value)
    write_wav(bad, np.stack([tone(440), tone(440)], 1), channels=2)
    with pytest.raises(DataError, match="2 channels"):
        load_dataset("speech_commands_logmel", "test", logmel)


def test_waveform_dataset_has_only_a_test_split(logmel):
    with pytest.raises(DataError) as e:
        load_dataset("speech_commands_wav", "train", logmel)
    assert "\n" not in str(e.value) and "'train'" in str(e.value) and "test" in str(e.value)
    ds = load_dataset("speech_commands_wav", "test", logmel)
    assert ds.x.shape == (24, 1, 1, 16000) and 0 <= ds.x.min() and ds.x.max() <= 1
    # the same clips as the log-mel test split, through the front end
    lm = load_dataset("speech_commands_logmel", "test", logmel)
    fe = LogMelFrontend()
    with torch.no_grad():
        out = fe(wf.unit_to_samples(torch.from_numpy(ds.x[:3])) / 32768.0)
    np.testing.assert_allclose(out.numpy(), lm.x[:3], atol=2e-4)


# ---------------------------------------------------------------- the front end


def test_pure_tone_lands_in_the_right_mel_bin():
    fe = LogMelFrontend()
    centers = mel_center_hz()
    for k in (5, 17, 30):
        x = wave(float(centers[k]), 0.3)
        out = fe(x)
        assert out.shape == (1, 1, 98, 40)
        assert int(out[0, 0].mean(0).argmax()) == k


def test_silence_maps_to_the_floor_and_loudness_is_monotone():
    fe = LogMelFrontend()
    assert fe(torch.zeros(2, 16000)).abs().max() == 0
    x = wave(1000.0, 0.01)
    assert (fe(4 * x).mean() > fe(x).mean()) and fe(x).max() <= 1
    # 20 ln(mel) + 139: quadrupling the amplitude adds 20 ln 4 = 27.7 levels where unclipped
    a, b = fe(x)[0, 0] * 255, fe(4 * x)[0, 0] * 255
    keep = (a > 1) & (b < 254)
    assert torch.allclose((b - a)[keep], torch.full_like(a[keep], 20 * np.log(4)), atol=0.05)


def test_gradient_reaches_the_waveform():
    fe = LogMelFrontend()
    x = (wave(700.0, 0.1, seed=1) + 0.01 * torch.randn(1, 16000)).requires_grad_()
    fe(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and (x.grad != 0).float().mean() > 0.5


# ---------------------------------------------------------------- waveform threat model


def test_eps_conversions_roundtrip():
    assert wf.convert_eps(1, "eps255", "samples") == pytest.approx(257.0)
    assert wf.convert_eps(257, "samples", "eps255") == pytest.approx(1.0)
    assert wf.convert_eps(16384, "samples", "db", peak=32768) == pytest.approx(20 * np.log10(2))
    assert wf.convert_eps(40, "db", "samples", peak=10000) == pytest.approx(100.0)
    db = wf.convert_eps(3.3, "eps255", "db", peak=20000)
    assert wf.convert_eps(db, "db", "eps255", peak=20000) == pytest.approx(3.3)
    with pytest.raises(ValueError, match="peak"):
        wf.convert_eps(1, "db", "samples")


def test_eps_in_db_below_the_peak_of_each_clip():
    """Peaks 1000 and 10000 samples: eps 1 sample is 60 and 80 dB below them; quantiles over clips."""
    peaks = np.array([1000.0, 10000.0, 10000.0, 10000.0])
    s = np.zeros((4, 16000))
    s[:, 123] = -peaks  # a negative peak counts by its size
    db = wf.eps_db_below_peak(wf.samples_to_unit(s).reshape(4, 1, 1, -1), [1, 10])
    assert db["1"]["median"] == pytest.approx(80.0) and db["10"]["median"] == pytest.approx(60.0)
    assert db["1"]["p10"] == pytest.approx(60.0 + 0.3 * 20, abs=0.1)  # numpy's linear quantile over 4 clips
    assert db["1"]["p90"] == pytest.approx(80.0)


def test_waveform_model_is_front_end_then_model_and_differentiable():
    net = build_model("mlc_dscnn", num_classes=12, input_shape=(1, 98, 40), mean=(0.33,), std=(0.2,)).eval()
    wm = wf.WaveformModel(net).eval()
    s = tone(900.0, amp=0.2)[None]
    x = torch.from_numpy(wf.samples_to_unit(s.astype(np.float32))).reshape(1, 1, 1, -1).requires_grad_()
    logits = wm(x)
    with torch.no_grad():
        ref = net(torch.from_numpy(logmel_images(s)))
    torch.testing.assert_close(logits.detach(), ref, atol=1e-3, rtol=1e-3)
    logits[0, 3].backward()
    assert x.grad.abs().sum() > 0
    assert wf.classify_wav(wm, s).tolist() == [int(ref.argmax())]


# ---------------------------------------------------------------- models on 98x40


@pytest.mark.parametrize(
    "name,quant",
    [
        ("mlc_dscnn", QuantConfig()),
        ("mlc_dscnn", QuantConfig(weight="int8", act="int8")),
        ("qnn_kws", QuantConfig(weight="int4", act="int4", first_weight="int8", last_weight="int8")),
        ("qnn_kws", QuantConfig(weight="ternary", act="int4", first_weight="int8", last_weight="int8")),
    ],
)
def test_keyword_models_take_98x40(name, quant):
    info = dataset_info("speech_commands_logmel")
    net = build_model(name, num_classes=12, input_shape=info.input_shape, mean=info.mean, std=info.std, quant=quant)
    out = net(torch.rand(3, *info.input_shape))
    assert out.shape == (3, 12)
    out.sum().backward()
    if name == "mlc_dscnn":  # the reference's parameter count is unchanged by the 98x40 stem
        trainable = sum(p.numel() for n, p in net.named_parameters() if "scaling" not in n and "quant" not in n)
        assert trainable == 23756
        assert net.stem.conv.stride == (4, 2)
        h = {}
        net.ds4.register_forward_hook(lambda m, i, o: h.update(s=o.shape))
        net(torch.rand(1, *info.input_shape))
        assert h["s"][2:] == (25, 20)


def test_reproduce_grid_builds_every_model_on_98x40():
    from tinyrobust.report.grid import load_grid

    grid = load_grid(Path(__file__).resolve().parents[1] / "configs" / "reproduce" / "speech_commands_logmel.yaml")
    assert grid.dataset == "speech_commands_logmel"
    assert grid.white == ["fgsm", "pgd", "apgd", "bpda", "autoattack"] and grid.black == ["square", "transfer"]
    info = dataset_info(grid.dataset)
    keys = {m.key for m in grid.models}
    assert {
        "mlc_dscnn_float",
        "mlc_dscnn_int8",
        "qnn_kws_int4",
        "qnn_kws_int4_jr",
        "qnn_kws_ternary",
        "qnn_kws_ternary_jr",
        "qnn_kws_float",
    } <= keys
    for budget in ("quick", "full"):
        for m in grid.models:
            cfg = grid.run_config(m, budget)
            assert cfg.data.dataset == "speech_commands_logmel"
    for s in grid.surrogates:  # transfer surrogates are the float models
        q = grid.run_config(grid.model(s), "full").model.quant
        assert q.weight == "float" and q.act == "float"
    cfg = grid.run_config(grid.model("qnn_kws_ternary_jr"), "full")
    net = build_model(
        cfg.model.name,
        num_classes=12,
        input_shape=info.input_shape,
        mean=info.mean,
        std=info.std,
        quant=cfg.model.quant,
    )
    assert net(torch.rand(2, *info.input_shape)).shape == (2, 12) and cfg.jr.weight > 0


# ---------------------------------------------------------------- the waveform-domain grid


def _tiny_logmel_grid() -> dict:
    """The shipped log-mel grid cut to three models, with conftest's seconds-scale budget."""
    grid = shipped_grid_with_tiny_budget("speech_commands_logmel", attack_n=6)
    keep = {"qnn_kws_ternary_jr", "mlc_dscnn_float", "qnn_kws_float"}
    grid["models"] = [m for m in grid["models"] if m["key"] in keep]
    grid["models"][[m["key"] for m in grid["models"]].index("qnn_kws_ternary_jr")]["role"] = "proposed"
    grid["surrogates"] = ["qnn_kws_float"]
    return grid


@pytest.mark.slow  # trains three tiny keyword models and attacks them on waveforms: ~30 s on 2 cores
def test_waveform_grid_attacks_the_log_mel_runs_on_the_test_wavs(logmel, tmp_path, monkeypatch, capsys):
    import json
    import shutil

    import yaml

    from tinyrobust.cli import main

    monkeypatch.setenv("TINYROBUST_DATA", str(logmel))
    monkeypatch.setenv("TINYROBUST_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "speech_commands_logmel.yaml").write_text(yaml.safe_dump(_tiny_logmel_grid(), sort_keys=False))
    shutil.copy(Path(__file__).resolve().parents[1] / "configs" / "reproduce" / "speech_commands_wav.yaml", grids)
    common = ["--budget", "tiny", "--grid-dir", str(grids), "--quiet"]
    # the log-mel grid trains; its default output is results/speech_commands_logmel-tiny
    assert main(["reproduce", "--dataset", "speech_commands_logmel", "--stages", "train", *common]) == 0
    runs = tmp_path / "results" / "speech_commands_logmel-tiny" / "runs"
    weights = {k: (runs / k / "model.safetensors").read_bytes() for k in ("qnn_kws_ternary_jr", "mlc_dscnn_float")}
    # the waveform grid finds those runs by its runs_dir, trains nothing, attacks the waveforms
    assert main(["reproduce", "--grid", "speech_commands_wav", *common]) == 0
    out = tmp_path / "results" / "speech_commands_wav-tiny"
    assert not (out / "runs").exists()
    assert all((runs / k / "model.safetensors").read_bytes() == w for k, w in weights.items())
    res = json.loads((out / "attacks" / "qnn_kws_ternary_jr" / "robustness.json").read_text())
    meta = res["meta"]
    assert meta["domain"] == "waveform" and meta["dataset"] == "speech_commands_wav"
    assert meta["trained_on"] == "speech_commands_logmel" and "16-bit samples" in meta["threat_model"]
    assert list(res["attacks"]) == ["fgsm", "pgd", "apgd", "bpda", "autoattack", "square", "transfer@qnn_kws_float"]
    assert sorted(res["attacks"]["fgsm"]["results"]) == sorted(f"{e / 257:g}" for e in (2, 4, 8))
    assert meta["subset"]["n"] == 6
    md = (out / "report.md").read_text()
    assert "eps 2 samples % [95% CI]" in md and "eps 8 samples" in md and "16-bit samples" in md
    assert "eps in dB below each attacked clip's peak" in md and "over the 6 clips: 2 samples: " in md
    assert "Grid note: 1 sample was dropped" in md
    assert "/work/" not in md and str(tmp_path) not in md
    # --runs-dir names the runs folder instead (kept relative to the output folder in what is written)
    out2 = tmp_path / "elsewhere"
    assert (
        main(["reproduce", "--grid", "speech_commands_wav", "--out", str(out2), "--runs-dir", str(runs), *common]) == 0
    )
    assert json.loads((out2 / "attacks" / "mlc_dscnn_float" / "robustness.json").read_text())["meta"]["domain"] == (
        "waveform"
    )


def test_square_moves_a_segment_on_waveforms_and_a_square_on_images():
    from tinyrobust.attacks.torch_attacks import SquareLinf

    assert SquareLinf._window(0.05, 1, 16000) == (1, 800)
    assert SquareLinf._window(1.0, 1, 16000) == (1, 15999)
    assert SquareLinf._window(0.05, 32, 32) == (7, 7)  # AutoAttack's rule on images, unchanged
    assert SquareLinf._window(1e-6, 32, 32) == (1, 1)


def test_autoattack_square_stage_on_height_one_inputs_is_the_segment_square():
    """torchattacks' Square cannot search (N, 1, 1, T) inputs; the standard AutoAttack swaps in ours."""
    from tinyrobust.attacks.autoattack import StandardAutoAttack, _SquareOneD
    from tinyrobust.attacks.target import Target

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(400, 10)).eval()
    target = Target(net, (1, 1, 400), 10, batch_size=16)
    x = np.full((4, 1, 1, 400), 0.5, dtype=np.float32)
    y = net(torch.from_numpy(x)).argmax(1).numpy()
    aa = StandardAutoAttack(target, 1e-6, steps=2, n_target_classes=2, square_queries=5)  # eps too small to break
    used = []
    orig = _SquareOneD.__call__
    monkey = pytest.MonkeyPatch()
    monkey.setattr(_SquareOneD, "__call__", lambda self, a, b: used.append(len(a)) or orig(self, a, b))
    try:
        adv = aa.generate(x, y)
    finally:
        monkey.undo()
    assert adv.shape == x.shape and np.abs(adv - x).max() <= 2e-6
    assert used == [4] and aa.broken_by["square"] == 0  # every survivor went through our Square
