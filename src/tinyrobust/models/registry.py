"""Model registry: ``build_model(name, ...)`` is the only way the CLI and configs create a model."""

from __future__ import annotations

from ..config import QuantConfig
from ..registry import Registry

MODELS: Registry = Registry("model")


def build_model(name: str, *, num_classes: int, input_shape, mean, std, quant: QuantConfig | None = None):
    builder = MODELS.get(name)
    return builder(
        num_classes=num_classes, input_shape=tuple(input_shape), mean=mean, std=std, quant=quant or QuantConfig()
    )
