"""Adversarial training inside the QAT loop: fgsm_rs, pgd and trades, composed with JR.

- ``fgsm_rs`` (Wong, Rice & Kolter 2020, "Fast is better than free"): a uniform random start in the
  L-inf ball, one signed-gradient step of ``step_size`` (default 1.25 eps), projected back to the
  ball and to [0, 1]. About 2x a plain step.
- ``pgd`` (Madry et al. 2018): a uniform random start, ``steps`` signed-gradient steps of
  ``step_size`` (default 2.5 eps / steps), each projected. About (steps + 1)x a plain step.
- ``trades`` (Zhang et al. 2019): loss = CE(f(x), y) + beta * KL(f(x) || f(x')), x' found by PGD
  on that KL from x + 0.001 N(0, 1) (their code's start).

The perturbations are searched through the model's own training-mode quantized forward pass, so
the gradients pass straight through the quantizers exactly as in the QAT step itself, and run
under ``frozen_statistics``: BatchNorm normalises with the attack batch's statistics but leaves its
running estimates alone, and Brevitas' activation-scale statistics are not collected, so only the
step's main pass moves them, once per step, as in plain QAT (``model.eval()`` is deliberately not
used: it would switch BatchNorm to running statistics and make the attack face another function).
Gradients are taken with ``torch.autograd.grad`` with respect to the input only: no parameter
gradient is accumulated by the search.

JR composes: the penalty is estimated on the inputs of the step's main pass (the adversarial
examples for fgsm_rs and pgd, the clean inputs for trades) by ``training_forward``, with its
``batch_fraction`` side pass unchanged.

Randomness (random starts) comes from a private generator seeded from (seed, epoch)
(``adversarial_generator``), like every other random draw of the loop, so a run resumed at an
epoch boundary draws the same starts as one never interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..stats import wilson
from .jacobian import frozen_statistics, training_forward


def step_size_of(adv: Any) -> float:
    """The attack step in pixel units /255: ``adv.step_size``, else the method's usual default."""
    if adv.step_size is not None:
        return float(adv.step_size)
    if adv.method == "fgsm_rs":
        return 1.25 * adv.eps  # Wong et al. 2020
    return 2.5 * adv.eps / adv.steps  # Madry et al. 2018's rule; TRADES' 2/255 at 8/255 with 10 steps


def adversarial_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """Private generator for random starts, a pure function of (seed, epoch, stream)."""
    state = np.random.SeedSequence([seed, epoch, 0xAD5, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _input_grad(model: nn.Module, x: torch.Tensor, loss_fn) -> torch.Tensor:
    """d loss_fn(model(x)) / dx, without touching any parameter's ``.grad``."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(model(x)), x)
    return g


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def _uniform_start(x: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    noise = torch.rand(x.shape, generator=gen, dtype=x.dtype).mul_(2).sub_(1).mul_(eps)
    return (x + noise).clamp_(0.0, 1.0)


def fgsm_rs(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, gen: torch.Generator
) -> torch.Tensor:
    """FGSM from a uniform random start (Wong et al. 2020); eps and step in [0, 1] pixel units."""
    x0 = _uniform_start(x, eps, gen)
    g = _input_grad(model, x0, lambda out: F.cross_entropy(out, y))
    return _project(x0 + step * g.sign(), x, eps).detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    gen: torch.Generator,
    random_start: bool = True,
) -> torch.Tensor:
    """L-inf PGD on the cross-entropy (Madry et al. 2018); eps and step in [0, 1] pixel units."""
    x_adv = _uniform_start(x, eps, gen) if random_start else x.clone()
    for _ in range(steps):
        g = _input_grad(model, x_adv, lambda out: F.cross_entropy(out, y))
        x_adv = _project(x_adv + step * g.sign(), x, eps)
    return x_adv.detach()


def trades_perturb(
    model: nn.Module,
    x: torch.Tensor,
    clean_logits: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """TRADES' inner maximisation: PGD on KL(f(x) || f(x')) from x + 0.001 N(0, 1)."""
    p_clean = F.softmax(clean_logits.detach(), dim=1)
    x_adv = (x + 0.001 * torch.randn(x.shape, generator=gen, dtype=x.dtype)).clamp_(0.0, 1.0)
    for _ in range(steps):
        g = _input_grad(model, x_adv, lambda out: F.kl_div(F.log_softmax(out, 1), p_clean, reduction="sum"))
        x_adv = _project(x_adv + step * g.sign(), x, eps)
    return x_adv.detach()


@dataclass
class StepOutput:
    """One training step's loss and what the epoch's metrics sum."""

    loss: torch.Tensor
    ce: torch.Tensor  # cross-entropy of the main pass (adversarial inputs for fgsm_rs/pgd, clean for trades)
    penalty: Optional[torch.Tensor]  # JR
    parts: Dict[str, float]  # JR estimates
    clean_correct: Optional[int]  # None where the step has no clean forward pass (fgsm_rs, pgd)
    robust_correct: Optional[int]  # on the step's adversarial examples; None without adversarial training
    trades_kl: Optional[float] = None


def training_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    adv: Any,
    jr: Any,
    label_smoothing: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> StepOutput:
    """The loss of one training step (``adv``: a config's ``train.adversarial``, ``jr``: its ``jr``).

    With ``adv.method == "none"`` this is exactly the plain QAT (+JR) step: same operations, same
    order, so runs without adversarial training are bit-identical to before."""
    jr_kw = dict(weight=jr.weight, layers=jr.layers, n_proj=jr.n_proj, batch_fraction=jr.batch_fraction)
    if adv.method == "none":
        logits, penalty, parts = training_forward(model, x, **jr_kw)
        ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        loss = ce if penalty is None else ce + penalty
        return StepOutput(loss, ce, penalty, parts, int((logits.argmax(1) == y).sum().item()), None)
    if generator is None:
        raise ValueError("adversarial training needs a generator for its random starts")
    eps, step = adv.eps / 255.0, step_size_of(adv) / 255.0
    if adv.method in ("fgsm_rs", "pgd"):
        with frozen_statistics(model):
            if adv.method == "fgsm_rs":
                x_adv = fgsm_rs(model, x, y, eps, step, generator)
            else:
                x_adv = pgd(model, x, y, eps, step, adv.steps, generator)
        logits, penalty, parts = training_forward(model, x_adv, **jr_kw)  # the main pass: statistics move here
        ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        loss = ce if penalty is None else ce + penalty
        return StepOutput(loss, ce, penalty, parts, None, int((logits.argmax(1) == y).sum().item()))
    if adv.method == "trades":
        logits, penalty, parts = training_forward(model, x, **jr_kw)  # clean main pass: statistics move here
        with frozen_statistics(model):
            x_adv = trades_perturb(model, x, logits, eps, step, adv.steps, generator)
            adv_logits = model(x_adv)
        ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        kl = F.kl_div(F.log_softmax(adv_logits, 1), F.softmax(logits, 1), reduction="batchmean")
        loss = ce + adv.beta * kl
        if penalty is not None:
            loss = loss + penalty
        return StepOutput(
            loss,
            ce,
            penalty,
            parts,
            int((logits.argmax(1) == y).sum().item()),
            int((adv_logits.argmax(1) == y).sum().item()),
            float(kl.detach()),
        )
    raise ValueError(f"unknown adversarial method {adv.method!r}")


# ---------------------------------------------------------------- the per-epoch guard


def robust_check(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    gen: torch.Generator,
    batch_size: int = 250,
) -> Dict[str, Any]:
    """PGD-``steps`` (random start, step 2.5 eps / steps) against the model in eval mode, the way it
    is deployed and attacked later; eps in pixel units /255. Clean and robust accuracy with 95%
    Wilson intervals, and the per-image outcomes ('1' robust) as ``robust_flags``. The model's
    train/eval mode is restored; no parameter gradient is touched."""
    was = model.training
    model.eval()
    e, s = eps / 255.0, 2.5 * eps / steps / 255.0
    clean = robust = 0
    flags = []
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            with torch.no_grad():
                ok = model(xb).argmax(1) == yb
            x_adv = pgd(model, xb, yb, e, s, steps, gen)
            with torch.no_grad():
                ok_adv = (model(x_adv).argmax(1) == yb) & ok
            clean += int(ok.sum())
            robust += int(ok_adv.sum())
            flags += ok_adv.tolist()
    finally:
        model.train(was)
    n = len(y)
    return {
        "n": n,
        "eps": eps,
        "steps": steps,
        "clean_accuracy": clean / max(1, n),
        "robust_accuracy": robust / max(1, n),
        "robust_ci95": list(wilson(robust, n)) if n else [0.0, 1.0],
        "robust_flags": "".join("1" if f else "0" for f in flags),  # per image, for paired comparisons
    }
