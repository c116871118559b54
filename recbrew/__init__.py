"""recbrew: a decoder language model as a multi-task ranker for a professional network."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recbrew")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]


def _check_subpackages() -> None:
    """``recbrew.eval`` and ``recbrew.kernels`` live in the root folders ``eval/`` and ``kernels/``, mapped there by
    the install. A checkout imported through another checkout's install (``PYTHONPATH=``, a shared ``.venv``) would
    silently run the other one's eval and kernels: refuse that with one line saying how to fix it."""
    from importlib.util import find_spec
    from pathlib import Path

    here = Path(__file__).resolve().parent
    for name in ("eval", "kernels"):
        spec = find_spec(f"{__name__}.{name}")
        if spec is None or spec.origin is None:
            continue  # a source tree without an install: the import itself will say so
        folder = Path(spec.origin).resolve().parent
        if folder.parent not in (here, here.parent):  # a wheel: recbrew/eval; an editable install: <root>/eval
            raise ImportError(f"recbrew at {here} would use recbrew.{name} from {folder}, another checkout; "
                              f"run `make setup` in {here.parent} (its own .venv) or drop the PYTHONPATH")


_check_subpackages()
