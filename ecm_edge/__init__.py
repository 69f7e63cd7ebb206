"""ecm-edge: train, export and run the ECM model for weakly supervised temporal action localization.

The runtime part of this package (data formats, evaluation, post-processing, streaming) imports no torch;
``ecm_edge.train`` and ``ecm_edge.export`` do.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("ecm-edge")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["Localizer", "__version__"]


def __getattr__(name: str):
    # ``ecm_edge.Localizer`` is imported on first use, so ``import ecm_edge`` stays light
    if name == "Localizer":
        from ecm_edge.runtime.localizer import Localizer

        return Localizer
    raise AttributeError(f"module 'ecm_edge' has no attribute {name!r}")
