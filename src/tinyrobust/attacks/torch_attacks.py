"""Attacks written here because ART's versions are unsuitable, each for a measured reason.

* APGD (AutoAttack's white-box core): ART's ``AutoProjectedGradientDescent`` rebuilds a plain
  ``PyTorchClassifier`` when given a loss type, silently dropping our EOT wrapper, and returns
  the last iterate instead of any misclassified point it visited (weaker attack).
* Square (L-inf): ART spends three forward passes per iteration (one query here) and moves
  every image's square to the same place; here each image draws its own square.
* Carlini-Wagner L2: ART's numpy line search was ~10x slower per optimisation step (measured).

All work on the images in batches of ``target.batch_size`` and return numpy adversarials.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .target import Target


def _batched(generate_batch, target: Target, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.empty_like(x, dtype=np.float32)
    for i in range(0, len(x), target.batch_size):
        xb = torch.as_tensor(x[i : i + target.batch_size], dtype=torch.float32, device=target.device)
        yb = torch.as_tensor(y[i : i + target.batch_size], dtype=torch.long, device=target.device)
        out[i : i + len(xb)] = generate_batch(xb, yb).detach().cpu().numpy()
    return out


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the best other logit: negative means misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone().scatter_(1, y[:, None], -torch.inf).amax(1)
    return true - other


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits ratio (Croce & Hein 2020): invariant to logit scale, so saturated
    softmax outputs (a common masking effect) do not hide the gradient. Needs >= 3 classes."""
    top = logits.sort(dim=1, descending=True).values
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


class APGD:
    """Auto-PGD, L-inf, untargeted (Croce & Hein 2020), with EOT gradients from the target.

    A sample counts as broken if any iterate was misclassified (AutoAttack's rule)."""

    def __init__(self, target: Target, eps: float, loss: str = "ce", steps: int = 100, restarts: int = 1):
        self.target, self.eps, self.steps, self.restarts = target, eps, steps, restarts
        self.loss = {"ce": lambda z, y: torch.nn.functional.cross_entropy(z, y, reduction="none"), "dlr": dlr_loss}[
            loss
        ]

    def generate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _batched(self._batch, self.target, x, y)

    def _batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            idx = robust.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            x_adv, broken = self._run(x[idx], y[idx])
            best[idx] = x_adv
            robust[idx[broken]] = False
        return best

    def _checkpoints(self) -> list[int]:
        p = [0.0, 0.22]
        while p[-1] < 1:
            p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        return sorted({math.ceil(q * self.steps) for q in p[1:] if q < 1})

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps, n = self.eps, len(x)
        shape = (n,) + (1,) * (x.dim() - 1)

        def evaluate(idx):
            # Loss, gradient and "misclassified" at x_adv[idx]; broken samples are not recomputed
            # (their first adversarial is kept), which changes nothing for the others.
            def fn(v):
                logits = self.target.model(v)
                return self.loss(logits, y[idx]), logits

            loss, grad, logits = self.target.value_and_grad(x_adv[idx], fn)
            return loss, grad, logits.argmax(1) != y[idx]

        t = 2 * torch.rand_like(x) - 1
        x_adv = _project(x + eps * t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(shape), x, eps)
        loss, grad, broken = evaluate(torch.arange(n, device=x.device))
        x_out = x_adv.clone()
        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()
        step = torch.full(shape, 2 * eps, device=x.device)
        x_prev, loss_prev = x_adv.clone(), loss.clone()
        checkpoints = self._checkpoints()
        last_check, improved = 0, torch.zeros(n, device=x.device)
        loss_best_at_check = loss_best.clone()
        reduced_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
        for i in range(self.steps):
            a = (~broken).nonzero().squeeze(1)
            if len(a) == 0:
                break
            xa, x0 = x_adv[a], x[a]
            z = _project(xa + step[a] * grad[a].sign(), x0, eps)
            momentum = 0.75 if i > 0 else 1.0
            x_prev[a], x_adv[a] = xa, _project(xa + momentum * (z - xa) + (1 - momentum) * (xa - x_prev[a]), x0, eps)
            loss_a, grad[a], fooled = evaluate(a)
            x_out[a[fooled]] = x_adv[a[fooled]]
            broken[a[fooled]] = True
            improved[a] += (loss_a > loss_prev[a]).float()
            loss_prev[a] = loss_a
            b = a[loss_a > loss_best[a]]
            x_best[b], grad_best[b], loss_best[b] = x_adv[b], grad[b], loss_prev[b]
            if i + 1 in checkpoints:
                # Halve the step where the loss rose too rarely or the best loss stalled, and
                # continue from the best point.
                stalled = improved <= 0.75 * (i + 1 - last_check)
                stalled |= ~reduced_at_check & (loss_best_at_check >= loss_best)
                reduced_at_check, loss_best_at_check = stalled, loss_best.clone()
                step[stalled] /= 2
                x_adv[stalled], grad[stalled] = x_best[stalled], grad_best[stalled]
                last_check, improved = i + 1, torch.zeros(n, device=x.device)
        x_out[~broken] = x_best[~broken]
        return x_out, broken


class AutoAttackAPGD:
    """APGD-CE, then APGD-DLR on what survived: AutoAttack's white-box attacks (untargeted)."""

    def __init__(self, target: Target, eps: float, steps: int = 100, restarts: int = 1):
        losses = ["ce", "dlr"] if target.num_classes >= 3 else ["ce"]
        self.target = target
        self.attacks = [APGD(target, eps, loss, steps, restarts) for loss in losses]

    def generate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x_adv = x.astype(np.float32, copy=True)
        robust = np.ones(len(x), dtype=bool)
        for attack in self.attacks:
            idx = np.flatnonzero(robust)
            if len(idx) == 0:
                break
            x_adv[idx] = attack.generate(x[idx], y[idx])
            robust[idx] = self.target.predict(x_adv[idx]) == y[idx]
        return x_adv


class SquareLinf:
    """Square Attack, L-inf, untargeted (Andriushchenko et al. 2020): score-based random search
    on the margin loss; one query per still-robust image per iteration, ``queries`` at most."""

    def __init__(self, target: Target, eps: float, queries: int = 1000, p_init: float = 0.8):
        self.target, self.eps, self.queries, self.p_init = target, eps, queries, p_init

    def generate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _batched(self._batch, self.target, x, y)

    def _p(self, i: int) -> float:
        # AutoAttack's schedule for the square's area, rescaled to the query budget.
        i = int(i / self.queries * 10000)
        halvings = sum(i > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
        return self.p_init / 2**halvings

    @staticmethod
    def _window(p: float, h: int, w: int) -> tuple[int, int]:
        """Height and width of the window covering a fraction ``p`` of the input: a square of side
        sqrt(p h w) for images (AutoAttack's rule), a segment of p w samples for a 1-D signal stored
        as height 1 (a waveform): a square there would be one sample wide and the attack would
        barely move."""
        if h == 1:
            return 1, max(min(int(round(p * w)), w - 1), 1)
        s = max(min(int(round(math.sqrt(p * h * w))), h - 1, w - 1), 1)
        return s, s

    def _batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        eps = self.eps
        stripes = eps * torch.randint(0, 2, (n, c, 1, w), device=x.device).mul(2).sub(1)
        x_best = torch.clamp(x + stripes, 0, 1)
        m_best = margin(self.target.logits(x_best), y)
        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        for i in range(1, self.queries):
            active = (m_best > 0).nonzero().squeeze(1)
            if len(active) == 0:
                break
            k = len(active)
            sh, sw = self._window(self._p(i), h, w)
            top = torch.randint(0, h - sh + 1, (k, 1), device=x.device)
            left = torch.randint(0, w - sw + 1, (k, 1), device=x.device)
            in_h = (rows >= top) & (rows < top + sh)
            in_w = (cols >= left) & (cols < left + sw)
            square = (in_h[:, None, :, None] & in_w[:, None, None, :]).float()
            signs = torch.randint(0, 2, (k, c, 1, 1), device=x.device).mul(2).sub(1)
            xa, x0 = x_best[active], x[active]
            # Inside the square, jump to the opposite corner of the eps-box; outside keep x_best.
            cand = _project(xa * (1 - square) + (x0 + eps * signs) * square, x0, eps)
            m_new = margin(self.target.logits(cand), y[active])
            better = m_new < m_best[active]
            x_best[active[better]] = cand[better]
            m_best[active[better]] = m_new[better]
        return x_best


class CarliniWagnerL2:
    """Carlini-Wagner L2 (2017), untargeted, minimum-norm: Adam in tanh space with a per-sample
    binary search on the trade-off constant; returns the smallest-L2 adversarial found (or x)."""

    def __init__(
        self,
        target: Target,
        steps: int = 50,
        binary_search_steps: int = 5,
        lr: float = 0.01,
        initial_const: float = 1.0,
        confidence: float = 0.0,
    ):
        self.target, self.steps, self.search_steps = target, steps, binary_search_steps
        self.lr, self.initial_const, self.confidence = lr, initial_const, confidence

    def generate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _batched(self._batch, self.target, x, y)

    def _batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = len(x)
        w0 = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        const = torch.full((n,), self.initial_const, device=x.device)
        lo, hi = torch.zeros_like(const), torch.full_like(const, torch.inf)
        best_l2 = torch.full_like(const, torch.inf)
        best = x.clone()
        for _ in range(self.search_steps):
            delta = torch.zeros_like(x, requires_grad=True)
            opt = torch.optim.Adam([delta], lr=self.lr)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)

            def fn(d, const=const):
                xa = (torch.tanh(w0 + d) + 1) / 2
                logits = self.target.model(xa)
                hinge = torch.clamp(margin(logits, y) + self.confidence, min=0)
                return ((xa - x) ** 2).flatten(1).sum(1) + const * hinge, logits

            for _ in range(self.steps):
                _, grad, logits = self.target.value_and_grad(delta, fn)
                with torch.no_grad():
                    xa = (torch.tanh(w0 + delta) + 1) / 2
                    l2 = (xa - x).flatten(1).norm(dim=1)
                    ok = margin(logits, y) < -self.confidence
                    better = ok & (l2 < best_l2)
                    best[better], best_l2[better] = xa[better], l2[better]
                    found |= ok
                delta.grad = grad
                opt.step()
            hi = torch.where(found, torch.minimum(hi, const), hi)
            lo = torch.where(found, lo, torch.maximum(lo, const))
            const = torch.where(torch.isinf(hi), const * 10, (lo + hi) / 2)
        return best
