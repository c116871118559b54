"""recbrew's Triton kernels for ranking workloads, importable as ``recbrew.kernels``.

Each op follows one shape: a ``@triton.jit`` kernel, a pure-torch reference that is also the CPU
fallback, an ``autograd.Function`` that dispatches on device, and a thin functional API.

- :mod:`recbrew.kernels.multi_item_attention`: shared prefix + K candidate segments, forward and
  backward;
- :mod:`recbrew.kernels.hf_attention`: multi-item attention as the Hugging Face attention function
  ``recbrew_multi_item`` (``register()``);
- :mod:`recbrew.kernels.answer_head`: answer positions -> LM head -> verbalizer log-softmax, plus the
  chunked full-vocabulary log-sum-exp;
- :mod:`recbrew.kernels.dispatch`: Triton on CUDA tensors, torch elsewhere, and how to force either.

Their benchmark (timings and peak memory against the torch baselines) is :mod:`recbrew.bench.kernels`.

The standard LLM ops (RMSNorm, RoPE, SwiGLU, fused linear cross entropy) come from ``liger-kernel``.
"""
