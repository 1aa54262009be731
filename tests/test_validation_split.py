"""The validation split (issue 12 item 1): held out of the TRAINING data, stratified, seeded,
disjoint from what the run trains on, recorded in the run, and a no-op at data.val_size 0."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinyrobust.config import config_from_dict
from tinyrobust.data import config_split, load_dataset, load_split, split_dataset, validation_indices
from tinyrobust.data.splits import indices_sha256
from tinyrobust.errors import ConfigError
from tinyrobust.train import loop

from conftest import assert_one_line_error, run_cli, tiny_config_dict


def test_indices_are_stratified_seeded_and_sorted():
    labels = np.repeat(np.arange(10), 100)[np.random.default_rng(3).permutation(1000)]
    idx = validation_indices(labels, 200, 0)
    assert len(idx) == 200 and len(set(idx.tolist())) == 200 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx], minlength=10).tolist() == [20] * 10  # stratified
    assert np.array_equal(idx, validation_indices(labels, 200, 0))  # same seed -> same split
    assert not np.array_equal(idx, validation_indices(labels, 200, 1))  # another seed -> another split
    assert len(validation_indices(labels, 0, 0)) == 0
    # unbalanced classes keep their proportions
    skewed = np.array([0] * 900 + [1] * 100)
    counts = np.bincount(skewed[validation_indices(skewed, 100, 0)])
    assert abs(counts[0] - 90) <= 1 and counts.sum() == 100


def test_train_and_val_partition_the_training_split(fake_cifar):
    full = load_dataset("cifar10", "train", fake_cifar)
    train = split_dataset(full, "train", 30, 0)
    val = split_dataset(full, "val", 30, 0)
    assert (len(train), len(val)) == (120, 30) and (train.split, val.split) == ("train", "val")
    idx = validation_indices(full.y, 30, 0)
    keep = np.setdiff1d(np.arange(len(full)), idx)
    assert np.array_equal(val.x, full.x[idx]) and np.array_equal(train.x, full.x[keep])  # disjoint, complete
    assert np.array_equal(train.y, full.y[keep])  # the rest, in the original order
    assert np.bincount(val.y, minlength=10).tolist() == [3] * 10
    # by name, as evaluation code gets a run's validation images
    by_name = load_split("cifar10", "val", fake_cifar, val_size=30, val_seed=0)
    assert np.array_equal(by_name.x, val.x) and np.array_equal(by_name.y, val.y)
    test = load_split("cifar10", "test", fake_cifar, val_size=30)
    assert len(test) == 50  # the test split is never touched
    with pytest.raises(ValueError):
        load_split("cifar10", "validation", fake_cifar)


def test_val_size_zero_leaves_training_unchanged(fake_cifar, tiny_config):
    full = load_dataset("cifar10", "train", fake_cifar)
    assert split_dataset(full, "train", 0) is full  # the very same arrays, same order
    assert len(split_dataset(full, "val", 0)) == 0
    cfg = tiny_config()
    assert cfg.data.val_size == 0  # the default: runs trained before the split keep their meaning
    prep = loop.prepare(cfg)
    assert np.array_equal(prep.train_ds.x, full.x) and np.array_equal(prep.train_ds.y, full.y)
    assert prep.val_ds is None and prep.val_record is None
    # train_subset still picks exactly what it picked before the split existed
    from tinyrobust.data.loader import stratified_subset

    sub = loop.prepare(tiny_config(data={"dataset": "cifar10", "train_subset": 40}))
    assert np.array_equal(sub.train_ds.x, full.x[stratified_subset(full.y, 40, 0)])


def test_train_subset_never_picks_validation_images(fake_cifar, tiny_config):
    cfg = tiny_config(data={"dataset": "cifar10", "val_size": 50, "train_subset": 60})
    prep = loop.prepare(cfg)
    full = load_dataset("cifar10", "train", fake_cifar)
    val_rows = {full.x[i].tobytes() for i in validation_indices(full.y, 50, 0)}
    assert len(prep.train_ds) == 60 and len(prep.val_ds) == 50
    assert not val_rows & {x.tobytes() for x in prep.train_ds.x}
    assert np.array_equal(config_split(cfg, "train").x, prep.train_ds.x)
    assert np.array_equal(config_split(cfg, "val").x, prep.val_ds.x)
    # the run's seed does not move the validation split (runs with different seeds share it)
    other = loop.prepare(tiny_config(seed=5, data={"dataset": "cifar10", "val_size": 50}))
    assert np.array_equal(other.val_ds.x, prep.val_ds.x)


@pytest.mark.parametrize("size", [150, 10_000])
def test_too_large_is_one_line_naming_the_key(fake_cifar, tmp_path, capsys, write_config, size):
    with pytest.raises(ConfigError, match=r"^data\.val_size: .* leaves no training data"):
        validation_indices(np.zeros(150, dtype=np.int64), size)
    cfg = write_config(tiny_config_dict(data={"dataset": "cifar10", "val_size": size}))
    code, out, err = run_cli(["train", "--config", cfg, "--run-dir", tmp_path / "r", "--quiet"], capsys)
    assert_one_line_error(code, err, "tinyrobust train")
    assert f"data.val_size: {size} leaves no training data (the training split has 150 examples)" in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_negative_val_size_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^data\.val_size: -1 is out of range"):
        config_from_dict({"data": {"val_size": -1}})


def test_run_records_the_split_and_reports_validation_accuracy(train_tiny, tmp_path):
    run_dir, summary = train_tiny(
        data={"dataset": "cifar10", "val_size": 30, "val_seed": 4}, train={"epochs": 1, "max_batches_per_epoch": 2}
    )
    saved = (run_dir / "config.yaml").read_text()
    assert "val_size: 30" in saved and "val_seed: 4" in saved
    full = load_dataset("cifar10", "train")
    want = {"size": 30, "seed": 4, "of": 150, "indices_sha256": indices_sha256(validation_indices(full.y, 30, 4))}
    assert json.loads((run_dir / "env.json").read_text())["val_split"] == want
    assert summary["val_split"] == want
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= row["val_accuracy"] <= 1.0
    # with a validation split, epochs are followed on it; the test split only gives the final number
    assert row["test_accuracy"] is None and 0.0 <= summary["test_accuracy"] <= 1.0
    # the reported number really is the accuracy on those 30 images
    from tinyrobust.runs import load_run

    val = config_split(load_run(run_dir).cfg, "val")
    x = torch.from_numpy(val.x).permute(0, 3, 1, 2).float() / 255
    assert loop.evaluate_accuracy(load_run(run_dir).model, x, torch.from_numpy(val.y)) == summary["val_accuracy"]
