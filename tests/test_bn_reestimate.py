"""BatchNorm re-estimation: restores the statistics of frozen (ternary) weights, draws no random
number of the run, and is off unless train.bn_reestimate_batches is set."""

from __future__ import annotations

import numpy as np
import torch

from tinyrobust.data.loader import to_tensors
from tinyrobust.data.splits import config_split
from tinyrobust.runs import load_run
from tinyrobust.train.bn_reestimate import batchnorms, reestimate_bn
from tinyrobust.train.loop import evaluate_accuracy


def _corrupt(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in batchnorms(model):
        m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 3)
        m.running_var.mul_(40)


def _bn_inputs(model, x):
    seen = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, inp[0]))
        for i, m in enumerate(batchnorms(model))
    ]
    with torch.no_grad():
        model.eval()
        model(x)
    for h in hooks:
        h.remove()
    return [seen[i] for i in range(len(hooks))]


def test_reestimation_restores_the_statistics_and_accuracy_of_frozen_ternary_weights(train_tiny):
    run_dir, _ = train_tiny(
        model={
            "name": "qnn",
            "quant": {"weight": "ternary", "act": "int4", "first_weight": "int8", "last_weight": "int8"},
        },
        train={"epochs": 3},
    )
    loaded = load_run(run_dir)
    model, ds = loaded.model, config_split(loaded.cfg, "train")
    x, y = to_tensors(ds)
    good = evaluate_accuracy(model, x, y)
    assert good > 0.5  # the tiny model learned the blobs

    _corrupt(model)
    assert evaluate_accuracy(model, x, y) < good - 0.2
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    assert reestimate_bn(model, ds, batches=4, batch_size=25, seed=0) == 100
    assert torch.equal(rng, torch.get_rng_state())  # no random number of the run was drawn
    assert evaluate_accuracy(model, x, y) >= good - 0.05

    # one batch holding every training image: the running statistics become the population's. The
    # first BN sees exactly the same input in both passes; later ones differ by the few 4-bit activation
    # levels that flip because training-mode BN divides by the biased variance and eval mode by the
    # stored unbiased one
    _corrupt(model, seed=1)
    reestimate_bn(model, ds, batches=1, batch_size=len(ds), seed=0)
    for i, (m, inp) in enumerate(zip(batchnorms(model), _bn_inputs(model, x))):
        mean = inp.mean((0, 2, 3))
        var = inp.transpose(0, 1).flatten(1).var(1, unbiased=True)
        tol = 1e-5 if i == 0 else 2e-3
        assert torch.allclose(m.running_mean, mean, atol=tol * 10, rtol=tol), i
        assert torch.allclose(m.running_var, var, atol=tol * 10, rtol=tol * 10), i


def test_config_key_runs_it_at_the_end_of_training_and_changes_nothing_else(train_tiny, tmp_path):
    quant = {
        "name": "qnn",
        "quant": {"weight": "ternary", "act": "int4", "first_weight": "int8", "last_weight": "int8"},
    }
    a_dir, _ = train_tiny(run_dir=tmp_path / "a", model=quant)
    b_dir, _ = train_tiny(run_dir=tmp_path / "b", model=quant, train={"bn_reestimate_batches": 3})
    a, b = load_run(a_dir).model.state_dict(), load_run(b_dir).model.state_dict()
    for k in a:
        if k.endswith(("running_mean", "running_var")):
            assert not torch.equal(a[k], b[k]), k  # recomputed
        elif not k.endswith("num_batches_tracked"):
            assert torch.equal(a[k], b[k]), k  # weights: the same training, bit for bit
    assert np.isfinite([float(v.sum()) for k, v in b.items() if k.endswith("running_var")]).all()
