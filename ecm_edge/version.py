"""The installed package's version, in a module of its own so that any layer can read it without importing the
package root (whose lazy ``Localizer`` belongs to the runtime)."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("ecm-edge")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
