import os

import pytest

# Triton runs kernels on CPU only through its interpreter, which must be chosen before any kernel
# module imports triton.
try:
    import torch

    _cuda = torch.cuda.is_available()
except Exception:  # torch missing or broken: no GPU either way
    _cuda = False
if not _cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if _cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's tokenizer, converted from the installed GGUF once and cached."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from recbrew.models.tokenizers import load_tokenizer

    return load_tokenizer()
