"""recbrew's Triton kernels for ranking workloads, importable as ``recbrew.kernels``.

Each op follows one shape: a ``@triton.jit`` kernel, a pure-torch reference that is also the CPU
fallback, an ``autograd.Function`` that dispatches on device, and a thin functional API.
"""
