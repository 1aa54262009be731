"""Model registry. Importing this package registers every built-in model."""

from . import dscnn as _dscnn  # noqa: F401  (registers "mlc_dscnn")
from . import kws as _kws  # noqa: F401  (registers "qnn_kws")
from . import qnn as _qnn  # noqa: F401  (registers "qnn")
from . import resnet8 as _resnet8  # noqa: F401  (registers "mlc_resnet8")
from .base import LayerPlan, Normalize, TinyModel, plan_layers
from .freeze import freeze
from .registry import MODELS, build_model

__all__ = ["MODELS", "build_model", "freeze", "LayerPlan", "Normalize", "TinyModel", "plan_layers"]
