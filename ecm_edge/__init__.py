"""ecm-edge: train, export and run the ECM model for weakly supervised temporal action localization.

The runtime part of this package (data formats, evaluation, post-processing, streaming) imports no torch;
``ecm_edge.train`` and ``ecm_edge.export`` do.
"""

from ecm_edge.version import __version__

__all__ = ["Localizer", "__version__"]


def __getattr__(name: str):
    # ``ecm_edge.Localizer`` is imported on first use, so ``import ecm_edge`` stays light
    if name == "Localizer":
        from ecm_edge.runtime.localizer import Localizer

        return Localizer
    raise AttributeError(f"module 'ecm_edge' has no attribute {name!r}")
