"""tinyrobust: deeply quantized tiny networks, made robust to adversarial attacks and measured honestly."""

__version__ = "0.1.0"
