"""Which floating-point format to compute in: bf16 where the hardware has bf16 arithmetic, fp32 elsewhere.

On CUDA that is any GPU reporting bf16 support. On CPU it is a processor with bf16 dot-product
instructions (AVX-512 BF16 or AMX): there bf16 matmuls run about twice as fast as fp32; without them
PyTorch emulates bf16 and is slower than fp32, so recbrew stays in fp32.

``RECBREW_BF16=0`` in the environment makes the automatic choice fp32 everywhere (training's frozen layers,
scoring, serving), for instance to reproduce on a bf16 machine the figures of one without bf16. An explicit
choice (a training config's ``bf16: true``, ``--dtype bf16``) still wins.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from recbrew.errors import UserError

#: CPU flags (as /proc/cpuinfo names them) of native bf16 arithmetic.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: The environment variable that turns the automatic bf16 choice off (0) or leaves it on (1, unset).
BF16_ENV = "RECBREW_BF16"


def bf16_wanted(wanted: bool | None) -> bool | None:
    """``wanted`` (true, false, or None for "where the hardware has it"), None read as false under RECBREW_BF16=0."""
    value = os.environ.get(BF16_ENV, "").strip().lower()
    if value in ("", "1", "auto"):
        return wanted
    if value == "0":
        return False if wanted is None else wanted
    raise UserError(f"{BF16_ENV}={value!r}: set 0 to compute in fp32 where bf16 would be chosen, or 1 (or unset it)")


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when this CPU has native bf16 instructions."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        flags = set()
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
        return any(f in flags for f in CPU_BF16_FLAGS)
    import torch

    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")


def fast_dtype(device: str, wanted: bool | None = None):
    """The dtype to compute in on ``device``: bf16 when ``wanted`` is not False and the hardware has it."""
    import torch

    if bf16_wanted(wanted) is False:
        return torch.float32
    if device.startswith("cuda"):
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        ok = cpu_has_bf16()
    return torch.bfloat16 if ok else torch.float32


def describe(dtype) -> str:
    """'bf16' or 'fp32' (for progress lines and run records)."""
    return str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float32", "fp32")
