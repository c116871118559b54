"""recbrew: a decoder language model as a multi-task ranker for a professional network."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recbrew")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
