"""`recbrew train export`: a run's result as a plain HF folder (LoRA merged in) or as the adapter alone."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

from recbrew.data.io import staged_directory
from recbrew.errors import UserError
from recbrew.train.run import META_FILE


def final_dir(run: str | Path) -> Path:
    """The `final/` folder of a run (or ``run`` itself when it is one)."""
    path = Path(run)
    for candidate in (path, path / "final"):
        if (candidate / META_FILE).is_file():
            return candidate
    raise UserError(f"{path}: not a finished training run (no final/{META_FILE}); run `recbrew train` first")


def export(run: str | Path, out: str | Path, *, merge: bool = True, force: bool = False) -> Path:
    """Write ``out``: the merged model (vLLM and `load_model` read it) or a copy of the adapter; returns ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = final_dir(run)
    meta = json.loads((src / META_FILE).read_text())
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to replace it")
    is_adapter = (src / "adapter_config.json").is_file()
    # Loading an adapter imports DeepSpeed (through accelerate), whose logger writes to stdout: keep that on
    # stderr, where a caller's result lines (and a `--json` caller's JSON) are not.
    with staged_directory(out) as tmp, contextlib.redirect_stdout(sys.stderr):
        if is_adapter and merge:
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(meta["base_model"], dtype=torch.float32)
            model = PeftModel.from_pretrained(base, src).merge_and_unload()
            # A plain model: vLLM must not find LoRA leftovers or a multi-item attention name in the config.
            model.config._attn_implementation = "sdpa"
            model.save_pretrained(tmp)
        elif is_adapter or not merge:
            for f in src.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        else:
            model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
            model.config._attn_implementation = "sdpa"
            model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
        meta["exported"] = {"from": str(src.resolve()), "merged": bool(is_adapter and merge)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    return out
