"""Which implementation a kernel op runs: Triton for CUDA tensors, the pure-torch path otherwise.

The choice can be overridden with the ``RECBREW_KERNELS`` environment variable or the
:func:`kernel_backend` context manager, both taking ``auto`` (the default), ``triton`` or ``torch``.
Forcing ``triton`` on CPU tensors runs the kernels through Triton's interpreter, which exists for
tests: ``TRITON_INTERPRET=1`` must be set before the kernel modules import, because ``@triton.jit``
picks the interpreter when it decorates a kernel.

Multi-item attention has more candidates (:func:`choose_attention`): recbrew's Triton kernel,
FlexAttention with a block mask built from the layout, SDPA with the dense mask, and the torch path.
``RECBREW_ATTENTION`` / :func:`attention_backend` pick one by name; ``auto`` follows :data:`ATTENTION_TABLE`.
"""

from __future__ import annotations

import contextlib
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path still works
    triton = tl = None

BACKENDS = ("auto", "triton", "torch")
#: Whether the kernels in this process were decorated for Triton's CPU interpreter.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: The in-process overrides (context managers) of each switch, by its environment variable.
_overrides: dict[str, str | None] = {"RECBREW_KERNELS": None, "RECBREW_ATTENTION": None}


def _asked(variable: str, allowed: tuple[str, ...]) -> str:
    """A switch's value: its in-process override, else its environment variable, else ``auto``."""
    choice = _overrides[variable] or os.environ.get(variable, "auto")
    if choice not in allowed:
        raise ValueError(f"{variable}={choice!r}: choose one of {', '.join(allowed)}")
    return choice


@contextlib.contextmanager
def _overriding(variable: str, name: str, allowed: tuple[str, ...], what: str):
    if name not in allowed:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(allowed)}")
    previous, _overrides[variable] = _overrides[variable], name
    try:
        yield
    finally:
        _overrides[variable] = previous


def backend() -> str:
    """The backend asked for: the :func:`kernel_backend` override, else ``RECBREW_KERNELS``, else ``auto``."""
    return _asked("RECBREW_KERNELS", BACKENDS)


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when an op on these tensors should launch its Triton kernel."""
    choice = backend()
    if choice == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if choice == "auto":
        return triton is not None and on_cuda and not INTERPRETED
    return _check_triton(*tensors)


@contextlib.contextmanager
def kernel_backend(name: str):
    """Run the enclosed kernel ops with backend ``name`` (``auto``, ``triton`` or ``torch``)."""
    with _overriding("RECBREW_KERNELS", name, BACKENDS, "kernel backend"):
        yield


def interpreter_blocks(gpu: int, interpreted: int) -> int:
    """A block size: the GPU choice, or a small one under the interpreter so small shapes still span tiles."""
    return interpreted if INTERPRETED else gpu


# Multi-item attention --------------------------------------------------------------------------------
ATTENTION_BACKENDS = ("auto", "triton", "flex", "sdpa", "torch")
#: Up to this many tokens per sequence, ``auto`` on CUDA takes SDPA with the dense mask (an [L, L] mask of
#: at most 1 MiB; one library call beats building tile tables or a block mask).
SDPA_MAX_TOKENS = 1024
#: ``auto``'s choice, first matching row wins. On the H200 (torch 2.11, bf16, 16/4 heads of 128) compiled
#: FlexAttention with a block mask ran x4.6 / x4.3 dense-mask SDPA (forward / forward + backward) at prefix
#: 8k with 500 candidates, recbrew's Triton kernel x2.4 / x1.4 and x0.8 at 50 candidates; so FlexAttention
#: takes every CUDA shape past SDPA_MAX_TOKENS, and the Triton kernel stands in where FlexAttention cannot
#: run (import or compile failure). `recbrew bench kernels` times every backend per shape and reports where
#: the table's choice was not the fastest.
ATTENTION_TABLE = (
    ("cpu (or any non-CUDA tensor)", "torch"),
    (f"cuda, tokens <= {SDPA_MAX_TOKENS}", "sdpa"),
    ("cuda, FlexAttention available", "flex"),
    ("cuda, triton installed", "triton"),
    ("cuda otherwise", "torch"),
)

def attention_choice() -> str:
    """The multi-item attention asked for: the :func:`attention_backend` override, else ``RECBREW_ATTENTION``."""
    return _asked("RECBREW_ATTENTION", ATTENTION_BACKENDS)


def choose_attention(*tensors: torch.Tensor, tokens: int, flex_ok: bool) -> str:
    """The implementation of one multi-item attention call: ``triton``, ``flex``, ``sdpa`` or ``torch``.

    An explicit ``RECBREW_ATTENTION`` wins, then a forced ``RECBREW_KERNELS`` (``triton``/``torch``), then
    :data:`ATTENTION_TABLE` for ``tokens`` per sequence; ``flex_ok`` says whether FlexAttention can run here.
    """
    choice = attention_choice()
    if choice == "triton" or (choice == "auto" and backend() == "triton"):
        _check_triton(*tensors)
        return "triton"
    if choice != "auto":
        if choice == "flex" and not flex_ok:
            raise RuntimeError("attention backend 'flex' was forced but FlexAttention is not available here")
        return choice
    if backend() == "torch" or not all(t.is_cuda for t in tensors):
        return "torch"
    if tokens <= SDPA_MAX_TOKENS:
        return "sdpa"
    if flex_ok:
        return "flex"
    return "triton" if triton is not None and not INTERPRETED else "torch"


def _check_triton(*tensors: torch.Tensor) -> bool:
    """True, or a clear error when Triton cannot run on these tensors."""
    if triton is None:
        raise RuntimeError("kernel backend 'triton' was forced but triton is not installed")
    if not all(t.is_cuda for t in tensors) and not INTERPRETED:
        raise RuntimeError("kernel backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before "
                           "recbrew.kernels is imported")
    return True


@contextlib.contextmanager
def attention_backend(name: str):
    """Run the enclosed multi-item attention calls with ``name`` (one of :data:`ATTENTION_BACKENDS`)."""
    with _overriding("RECBREW_ATTENTION", name, ATTENTION_BACKENDS, "attention backend"):
        yield
