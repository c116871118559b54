"""Which implementation a kernel op runs: Triton for CUDA tensors, the pure-torch path otherwise.

The choice can be overridden with the ``RECBREW_KERNELS`` environment variable or the
:func:`kernel_backend` context manager, both taking ``auto`` (the default), ``triton`` or ``torch``.
Forcing ``triton`` on CPU tensors runs the kernels through Triton's interpreter, which exists for
tests: ``TRITON_INTERPRET=1`` must be set before the kernel modules import, because ``@triton.jit``
picks the interpreter when it decorates a kernel.
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

_override: str | None = None


def backend() -> str:
    """The backend asked for: the :func:`kernel_backend` override, else ``RECBREW_KERNELS``, else ``auto``."""
    choice = _override or os.environ.get("RECBREW_KERNELS", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"RECBREW_KERNELS={choice!r}: choose one of {', '.join(BACKENDS)}")
    return choice


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when an op on these tensors should launch its Triton kernel."""
    choice = backend()
    if choice == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if choice == "auto":
        return triton is not None and on_cuda and not INTERPRETED
    if triton is None:
        raise RuntimeError("kernel backend 'triton' was forced but triton is not installed")
    if not on_cuda and not INTERPRETED:
        raise RuntimeError("kernel backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before "
                           "recbrew.kernels is imported")
    return True


@contextlib.contextmanager
def kernel_backend(name: str):
    """Run the enclosed kernel ops with backend ``name`` (``auto``, ``triton`` or ``torch``)."""
    global _override
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    previous, _override = _override, name
    try:
        yield
    finally:
        _override = previous


def interpreter_blocks(gpu: int, interpreted: int) -> int:
    """A block size: the GPU choice, or a small one under the interpreter so small shapes still span tiles."""
    return interpreted if INTERPRETED else gpu
