"""ecm-edge: train, export and run the ECM model for weakly supervised temporal action localization.

What an embedder needs is importable from here::

    from ecm_edge import Localizer, StreamEngine, JsonlSink

    for event in Localizer.from_artifacts("runs/train/exp", extractor="tiny").run("gate.mp4"):
        print(event.type, event.label, event.start, event.end)

The runtime part of this package (data formats, evaluation, post-processing, streaming) imports no torch;
``ecm_edge.train`` and ``ecm_edge.export`` do. The names below are imported on first use, so ``import ecm_edge``
stays light.
"""

from importlib import import_module

from ecm_edge.version import __version__

# public name → the module that defines it
_EXPORTS = {
    "Localizer": "ecm_edge.runtime.localizer",
    "StreamEngine": "ecm_edge.runtime.engine",
    "SourceSpec": "ecm_edge.runtime.source_specs",
    "load_sources_file": "ecm_edge.runtime.source_specs",
    "Event": "ecm_edge.runtime.events",
    "Segment": "ecm_edge.runtime.events",
    "SegmentOpen": "ecm_edge.runtime.events",
    "Alert": "ecm_edge.runtime.events",
    "Stats": "ecm_edge.runtime.events",
    "ProcessStats": "ecm_edge.runtime.events",
    "SourceLost": "ecm_edge.runtime.events",
    "SourceRestored": "ecm_edge.runtime.events",
    "Sink": "ecm_edge.runtime.sinks",
    "JsonlSink": "ecm_edge.runtime.sinks",
    "WebhookSink": "ecm_edge.runtime.sinks",
    "CallbackSink": "ecm_edge.runtime.sinks",
    "MqttSink": "ecm_edge.runtime.mqtt",
    "EcmEdgeError": "ecm_edge.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ecm_edge' has no attribute {name!r}")
    return getattr(import_module(module), name)
