"""Errors a user can act on.

Library code raises :class:`EcmEdgeError` (or a subclass) with a message that says what was wrong, where, and
what to do; the CLI prints it as one line and exits with code 1.
"""


class EcmEdgeError(Exception):
    """An error caused by input or environment, with a message meant for the user."""


class ConfigError(EcmEdgeError):
    """A config file or override is invalid."""


class DataError(EcmEdgeError):
    """A dataset, annotation or feature file is missing or malformed."""


class CheckpointError(EcmEdgeError):
    """A checkpoint or deploy artifact cannot be used."""


class MissingDependencyError(EcmEdgeError):
    """An optional dependency (torch, onnx, TensorRT, numba-cuda) is needed for this path."""

    def __init__(self, package: str, purpose: str, hint: str = ""):
        message = f"{package} is needed for {purpose} but is not installed"
        if hint:
            message += f"; {hint}"
        super().__init__(message)
        self.package = package
