"""Standard AutoAttack (Croce & Hein 2020, version 'standard', L-inf) from a maintained
implementation, torchattacks 3.5.1, behind our :class:`~.target.Target`.

Why a wrapper and not ``torchattacks.AutoAttack`` itself: that class builds APGD, APGD-T and FAB
with torchattacks' default of 10 iterations (the reference implementation, fra31/auto-attack,
uses 100), and it cannot count queries or use our batch size. Here the same four torchattacks
attacks run with the reference budgets (100 steps, 9 target classes, Square 5000 queries), each
on the images the previous ones left correctly classified, through a module that counts every
forward pass as target queries; APGD/APGD-T average gradients over the target's EOT samples.
``benchmarks/autoattack_compare.py`` compares this with ``torchattacks.AutoAttack`` run directly.
On 1-D inputs of height 1 (waveforms) the Square stage is ours (:class:`_SquareOneD`, same budget).
"""

from __future__ import annotations

import numpy as np
import torch

from .target import Target

# One letter per stage for the per-image ``stages`` string of robustness.json (which stage broke the image);
# the score-based Square stage is black-box: the masking check counts its breaks as black-box ones.
STAGE_CODES = {"apgd-ce": "c", "apgd-t": "t", "fab-t": "f", "square": "s"}
BLACK_BOX_STAGES = ("s",)


class _CountingModule(torch.nn.Module):
    """The target's model as torchattacks sees it: every forward pass counts as queries."""

    def __init__(self, target: Target):
        super().__init__()
        self.model = target.model
        self._target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._target.queries += len(x)
        return self.model(x)


def standard_attacks(
    model: torch.nn.Module,
    eps: float,
    num_classes: int,
    *,
    steps: int = 100,
    n_target_classes: int = 9,
    square_queries: int = 5000,
    eot_samples: int = 1,
    seed: int = 0,
) -> list:
    """The four torchattacks attacks of standard AutoAttack with the reference budgets, in order."""
    import torchattacks

    targets = max(1, min(int(n_target_classes), num_classes - 1))
    apgd_ce = torchattacks.APGD(
        model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce", eot_iter=eot_samples
    )
    apgd_t = torchattacks.APGDT(
        model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, eot_iter=eot_samples, n_classes=num_classes
    )
    apgd_t.n_target_classes = targets
    fab_t = torchattacks.FAB(
        model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, multi_targeted=True, n_classes=num_classes
    )
    fab_t.n_target_classes = targets
    square = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=square_queries, n_restarts=1, seed=seed)
    attacks = [("apgd-ce", apgd_ce), ("apgd-t", apgd_t), ("fab-t", fab_t), ("square", square)]
    if num_classes < 3:  # APGD-T / FAB-T need a target class other than the true one and the top other
        attacks = [attacks[0], attacks[3]]
    return attacks


class _SquareOneD:
    """The Square stage for 1-D inputs stored with height 1 (waveforms, (N, 1, 1, T)): torchattacks'
    Square draws a square of side sqrt(p T) on a height-1 input, which indexes outside it (its
    window start is drawn from a negative range) and does not search properly; ours
    (:class:`.torch_attacks.SquareLinf`) moves a segment of p T samples. Same query budget."""

    def __init__(self, module: torch.nn.Module, target: Target, eps: float, queries: int):
        from .torch_attacks import SquareLinf

        inner = Target(module, target.input_shape, target.num_classes, batch_size=target.batch_size)
        self.square = SquareLinf(inner, eps, queries=queries)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.square.generate(x.cpu().numpy(), y.cpu().numpy())).to(x.device)


# _no_graph_across_steps: torchattacks 3.5.1's APGD and APGD-T record the best adversarial so far
# (``x_best_adv[idx] = x_adv[idx] + 0.0``) outside ``torch.no_grad`` while ``x_adv`` requires grad, so
# every step's input is kept alive by a growing autograd graph: on 16000-sample waveforms at batch 128,
# APGD-T's 9 x 100 steps held ~12 GB (an OOM kill on the 23 GB VM). Their gradients are taken under
# ``torch.enable_grad()``, so calling the attacks under ``no_grad`` computes the same thing without the
# graph (flat memory; docs/attacks.md).


class StandardAutoAttack:
    """APGD-CE -> APGD-T -> FAB-T -> Square-5000, each on the survivors (torchattacks 3.5.1)."""

    def __init__(
        self, target: Target, eps: float, steps: int = 100, n_target_classes: int = 9, square_queries: int = 5000
    ):
        self.target, self.eps = target, eps
        self.kw = dict(steps=steps, n_target_classes=n_target_classes, square_queries=square_queries)
        self.broken_by: dict[str, int] = {}  # stage -> images it broke (last generate call)
        self.stage_of: np.ndarray = np.empty(0, dtype="<U1")  # per image: STAGE_CODES letter, "" if unbroken

    def generate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        t = self.target
        module = _CountingModule(t).eval()
        seed = int(torch.initial_seed() % (2**31))  # the runner seeds each (attack, eps) job
        stages = standard_attacks(module, self.eps, t.num_classes, eot_samples=t.eot_samples, seed=seed, **self.kw)
        if x.ndim == 4 and x.shape[2] == 1:  # a 1-D signal: torchattacks' Square cannot search it
            stages = [
                (n, _SquareOneD(module, t, self.eps, self.kw["square_queries"]) if n == "square" else a)
                for n, a in stages
            ]
        x_adv = x.astype(np.float32, copy=True)
        robust = np.ones(len(x), dtype=bool)
        self.broken_by = {}
        self.stage_of = np.full(len(x), "", dtype="<U1")
        for name, attack in stages:
            idx = np.flatnonzero(robust)
            if len(idx) == 0:
                break
            for i in range(0, len(idx), t.batch_size):
                b = idx[i : i + t.batch_size]
                xb = torch.as_tensor(x[b], dtype=torch.float32, device=t.device)
                yb = torch.as_tensor(y[b], dtype=torch.long, device=t.device)
                with torch.no_grad():  # see _no_graph_across_steps
                    adv = attack(xb, yb).detach()
                adv = torch.min(torch.max(adv, xb - self.eps), xb + self.eps).clamp(0, 1)
                fooled = (t.logits(adv).argmax(1) != yb).cpu().numpy()
                x_adv[b[fooled]] = adv.cpu().numpy()[fooled]
                robust[b[fooled]] = False
                self.stage_of[b[fooled]] = STAGE_CODES[name]
            self.broken_by[name] = int(len(idx) - robust[idx].sum())
        return x_adv
