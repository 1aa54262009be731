"""Exceptions that the CLI turns into one clear line and a non-zero exit code.

Every error a user can cause (bad config, missing data, corrupt file, unknown name) is a
``TinyRobustError``; anything else is a bug and keeps its traceback.
"""


class TinyRobustError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class ConfigError(TinyRobustError):
    """A config key is unknown, of the wrong type or out of range."""


class DataError(TinyRobustError):
    """A dataset is missing, corrupt, or does not match what the model expects."""


class UnknownNameError(TinyRobustError, KeyError):
    """A name (model, quantizer, attack, dataset) is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(TinyRobustError):
    """A checkpoint is missing, corrupt, or would need unsafe loading."""


class RunLocked(TinyRobustError):
    """Another process is writing this run directory."""


class TrainingDiverged(TinyRobustError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


class ExportError(TinyRobustError):
    """A model cannot be expressed in the requested export format."""


class AttackError(TinyRobustError):
    """An attack request is invalid (unknown attack, epsilon out of range, ...)."""
