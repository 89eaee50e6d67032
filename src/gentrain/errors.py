"""Errors a user can fix. The CLI prints them as one line (no traceback unless HYDRA_FULL_ERROR=1)."""


class GentrainError(Exception):
    """Base class: a problem with the user's input, not a bug in gentrain."""


class ConfigError(GentrainError):
    """A config that composes but cannot work (batch size 0, an image size a model cannot take...)."""


class DataError(GentrainError):
    """Missing, truncated or corrupt dataset files, or a failed download."""


class CheckpointError(GentrainError):
    """A checkpoint that cannot be read or does not belong to this run's model."""


class NonFiniteError(GentrainError):
    """Training produced NaN or infinite losses or gradients and the policy says to stop."""


class Preempted(GentrainError):
    """The run was asked to stop (SIGTERM, Ctrl-C) and saved a checkpoint to continue from."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
