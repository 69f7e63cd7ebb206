"""ecm-edge: train, export and run the ECM model for weakly supervised temporal action localization.

The runtime part of this package (data formats, evaluation, post-processing, streaming) imports no torch;
``ecm_edge.train`` and ``ecm_edge.export`` do.
"""

from ecm_edge.version import __version__

__all__ = ["Localizer", "StreamEngine", "__version__"]


def __getattr__(name: str):
    # ``ecm_edge.Localizer`` and ``ecm_edge.StreamEngine`` are imported on first use, so ``import ecm_edge``
    # stays light
    if name == "Localizer":
        from ecm_edge.runtime.localizer import Localizer

        return Localizer
    if name == "StreamEngine":
        from ecm_edge.runtime.engine import StreamEngine

        return StreamEngine
    raise AttributeError(f"module 'ecm_edge' has no attribute {name!r}")
