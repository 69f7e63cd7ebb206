"""Errors a user can act on, and optional imports that fail as one.

Library code raises :class:`EcmEdgeError` (or a subclass) with a message that says what was wrong, where, and
what to do; the CLI prints it as one line and exits with code 1.
"""


import importlib
from typing import Any


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


def import_optional(module: str, package: str, purpose: str, hint: str = "") -> Any:
    """``import module`` for an optional path, or :class:`MissingDependencyError` naming the ``package`` to install
    (or what works instead, ``hint``) when it is missing; importing ecm_edge itself never needs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package, purpose, hint) from None
