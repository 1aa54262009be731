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
gradient is accumulated by the search. Once Brevitas has fixed its activation scales, the search
runs on an :class:`AttackTwin`, a plain copy holding the step's quantized weights: the same
function (bit-identical logits, checked each epoch), fewer Python calls per pass.

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

from ..errors import ExportError
from ..models.freeze import FrozenQuantReLU, frozen_copy, frozen_replacements
from ..stats import wilson
from .checkpoint import runtime_stats_scalers
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


class AttackTwin:
    """The frozen path for the attack passes inside an adversarial training step.

    Within one step the weights do not change, so the perturbation search (1 pass for fgsm_rs, k for
    pgd / trades) can run on a plain copy holding the step's quantized weights instead of Brevitas'
    eager modules, which re-quantize every weight on every call (about 1.8x faster per pass,
    ``benchmarks/results/freeze_throughput.md``). The copy computes the same training-mode function
    as the model under ``frozen_statistics``: BatchNorm normalises with the batch's own statistics
    (its running statistics are removed, so none is updated), activation quantizers use the learned
    scale. Input gradients agree up to float rounding (Brevitas' straight-through backward multiplies
    and divides by the scale where the twin masks).

    :meth:`current` refreshes the copy from the model (quantized weights, biases, BatchNorm affine
    parameters, activation scales: a few ms) and returns it, or returns None, so that the caller
    searches on the model itself:

    - while any activation quantizer is still in Brevitas' statistics-collection phase (its scale then
      comes from each batch; the first ``collect_stats_steps`` training steps, 300 by default);
    - when the copy's logits on the first batch of a check (one per epoch: :meth:`recheck`) are not
      bit-identical to the model's (the reason is kept in ``disabled``).

    :meth:`build` returns None for a model the frozen path does not know or one with stochastic
    rounding (a fresh random rounding on every eager pass, which one copy cannot reproduce)."""

    def __init__(self, model: nn.Module):
        was = model.training
        model.eval()  # quantizer scales read without touching their statistics phase
        try:
            replacements = frozen_replacements(model)
        finally:
            model.train(was)
        self.model = model
        self.twin = frozen_copy(model, replacements)
        for m in self.twin.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean = m.running_var = m.num_batches_tracked = None  # batch statistics, updates none
                m.track_running_stats = False
        mods = dict(model.named_modules())
        twin_mods = dict(self.twin.named_modules())
        self._weights = [(mods[n], twin_mods[n]) for n, r in replacements.items() if not isinstance(r, FrozenQuantReLU)]
        self._acts = [(mods[n], twin_mods[n]) for n, r in replacements.items() if isinstance(r, FrozenQuantReLU)]
        replaced = tuple(n + "." for n in replacements)
        own = dict(model.named_parameters())
        self._params = [(own[n], p) for n, p in self.twin.named_parameters() if n in own and not n.startswith(replaced)]
        self._stat_scalers = list(runtime_stats_scalers(model).values())
        self.disabled: Optional[str] = None
        self._checked = False

    @classmethod
    def build(cls, model: nn.Module) -> Optional["AttackTwin"]:
        from brevitas.core.function_wrapper.stochastic_round import StochasticRoundSte

        if getattr(model, "stochastic", False) or any(isinstance(m, StochasticRoundSte) for m in model.modules()):
            return None
        try:
            twin = cls(model)
        except ExportError:
            return None
        return twin if twin._weights or twin._acts else None  # a float model: nothing to gain

    def recheck(self) -> None:
        """Compare the copy's logits with the model's again at the next :meth:`current` call."""
        self._checked = False

    def _collecting(self) -> bool:
        return any(m.counter <= m.collect_stats_steps for m in self._stat_scalers)

    @torch.no_grad()
    def _refresh(self) -> None:
        for layer, new in self._weights:
            new.weight.copy_(layer.quant_weight().value)
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        for layer, new in self._acts:
            new.scale.copy_(layer.act_quant.scale().reshape(()))
        for src, dst in self._params:
            dst.copy_(src)

    def current(self, x: torch.Tensor) -> Optional[nn.Module]:
        """The copy, refreshed to the model's weights now, or None (search on the model itself)."""
        if self.disabled is not None or self._collecting():
            return None
        self._refresh()
        if not self._checked:
            with torch.no_grad(), frozen_statistics(self.model):
                ref, got = self.model(x), self.twin(x)
            if not torch.equal(ref, got):
                diff = float((ref - got).abs().max())
                self.disabled = f"the frozen copy's logits differ from the model's (max {diff:.3g})"
                return None
            self._checked = True
        return self.twin


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
    search_model: Optional[nn.Module] = None,
) -> StepOutput:
    """The loss of one training step (``adv``: a config's ``train.adversarial``, ``jr``: its ``jr``).

    ``search_model``: what the perturbation search runs on (an :class:`AttackTwin`'s current copy,
    the same function as ``model``); ``model`` itself when None. Every loss pass runs on ``model``.

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
    search = model if search_model is None else search_model
    if adv.method in ("fgsm_rs", "pgd"):
        with frozen_statistics(model):
            if adv.method == "fgsm_rs":
                x_adv = fgsm_rs(search, x, y, eps, step, generator)
            else:
                x_adv = pgd(search, x, y, eps, step, adv.steps, generator)
        logits, penalty, parts = training_forward(model, x_adv, **jr_kw)  # the main pass: statistics move here
        ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        loss = ce if penalty is None else ce + penalty
        return StepOutput(loss, ce, penalty, parts, None, int((logits.argmax(1) == y).sum().item()))
    if adv.method == "trades":
        logits, penalty, parts = training_forward(model, x, **jr_kw)  # clean main pass: statistics move here
        with frozen_statistics(model):
            x_adv = trades_perturb(search, x, logits, eps, step, adv.steps, generator)
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
