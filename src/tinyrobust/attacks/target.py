"""The attacked model behind one interface: counted queries, EOT gradients, an ART view.

Every attack sees the model only through a :class:`Target`, so query counting (black-box
budgets) and Expectation-over-Transformation (stochastic quantizers) cannot be bypassed by
one attack forgetting them.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

from ..errors import AttackError

TARGETS = ("frozen", "brevitas")


def attack_model(model: torch.nn.Module, target: str = "frozen") -> torch.nn.Module:
    """The module attacks query: ``"frozen"`` (default) the frozen inference form of ``model``
    (:func:`tinyrobust.models.freeze`: same logits bit for bit, same straight-through gradients,
    faster, measured in benchmarks/results/freeze_throughput.md); ``"brevitas"`` the model as trained
    (the reference path). A float model is frozen too (an eval copy without parameter gradients);
    an already frozen model is returned as it is."""
    if target not in TARGETS:
        raise AttackError(f"unknown attack target {target!r}; choose one of: {', '.join(TARGETS)}")
    if target == "brevitas" or getattr(model, "frozen", False):
        return model
    from ..models.freeze import freeze

    return freeze(model.eval())


class Target:
    """A classifier in eval mode taking float32 NCHW input in [0, 1] and returning logits.

    ``queries`` counts images passed through :meth:`logits` / the ART view's ``predict``;
    ``eot_samples`` > 1 averages every gradient over that many stochastic forward passes.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        input_shape: tuple[int, ...],
        num_classes: int | None = None,
        *,
        eot_samples: int = 1,
        batch_size: int = 128,
    ):
        self.model = model.eval()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.eot_samples = max(1, int(eot_samples))
        self.batch_size = int(batch_size)
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        if num_classes is None:  # read it off the model: one forward pass
            with torch.no_grad():
                num_classes = model(torch.zeros((1, *self.input_shape), device=self.device)).shape[1]
        self.num_classes = int(num_classes)
        self.queries = 0

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` (counted as ``len(x)`` queries), computed in batches."""
        self.queries += len(x)
        out = [self.model(x[i : i + self.batch_size].to(self.device)) for i in range(0, len(x), self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.num_classes)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted labels of a numpy batch."""
        return self.logits(torch.as_tensor(x, dtype=torch.float32)).argmax(1).cpu().numpy()

    def value_and_grad(self, var: torch.Tensor, fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]):
        """EOT mean of ``fn(var) -> (per-sample loss, logits)`` and of the gradient of its sum w.r.t. ``var``.

        Per-sample losses are summed, so each sample's gradient does not depend on the batch.
        Only ``var`` gets a gradient (``autograd.grad``), never the model's parameters.
        """
        var = var.detach().requires_grad_(True)
        loss_sum = grad_sum = logits_sum = 0.0
        for _ in range(self.eot_samples):
            loss, logits = fn(var)
            (grad,) = torch.autograd.grad(loss.sum(), var)
            loss_sum, grad_sum = loss_sum + loss.detach(), grad_sum + grad
            logits_sum = logits_sum + logits.detach()
        k = self.eot_samples
        return loss_sum / k, grad_sum / k, logits_sum / k

    @functools.cached_property
    def art(self):
        """An ART ``PyTorchClassifier`` over the same model, sharing the query count and EOT."""
        return _art_classifier_class()(self)


@functools.cache
def _art_classifier_class():
    # ART is imported lazily: it adds seconds to every CLI start.
    from art.estimators.classification import PyTorchClassifier

    class CountingEOTClassifier(PyTorchClassifier):
        """PyTorchClassifier that counts ``predict`` queries and averages gradients over EOT samples."""

        def __init__(self, target: Target):
            super().__init__(
                model=target.model,
                loss=torch.nn.CrossEntropyLoss(),
                input_shape=target.input_shape,
                nb_classes=target.num_classes,
                clip_values=(0.0, 1.0),
                device_type="gpu" if target.device.type == "cuda" else "cpu",
            )
            self._target = target

        def predict(self, x, batch_size: int = 128, training_mode: bool = False, **kwargs):
            self._target.queries += len(x)
            # Some ART attacks (HopSkipJump) pass float64, which a float32 model rejects.
            return super().predict(
                np.asarray(x, dtype=np.float32), batch_size=batch_size, training_mode=training_mode, **kwargs
            )

        def loss_gradient(self, x, y, training_mode: bool = False, **kwargs):
            return self._eot(super().loss_gradient, x, y, training_mode=training_mode, **kwargs)

        def class_gradient(self, x, label=None, training_mode: bool = False, **kwargs):
            return self._eot(super().class_gradient, x, label=label, training_mode=training_mode, **kwargs)

        def _eot(self, grad_fn, *args, **kwargs):
            k = self._target.eot_samples
            total = grad_fn(*args, **kwargs)
            for _ in range(k - 1):
                total = total + grad_fn(*args, **kwargs)
            return total / k if k > 1 else total

    return CountingEOTClassifier
