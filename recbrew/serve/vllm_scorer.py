"""`VLLMScorer`: offline batch scoring of examples through `vllm.LLM` (same prompts as the HF scorer).

`recbrew eval --llm-engine vllm` scores its language models with it (`load_vllm_scorer`). Each candidate is
one prompt, prefix + segment; with prefix caching the engine computes a request's shared prefix once. The
scores equal the HF scorer's within 1e-3 in fp32 (a test), but on a CPU the HF multi-item path is the faster
one: on 2 Zen 4 class cores, 100 quickstart test slates took 25.6 s there and 36.2 s here in fp32 limited to
AVX2, 14.1 s and 18.0 s in bf16 (`recbrew bench score --slates 100 --modes multi,vllm`, docs/eval.md).

Scripts that build a `vllm.LLM` need an ``if __name__ == "__main__":`` guard: the engine starts
worker processes that re-import the main module.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recbrew.errors import UserError
from recbrew.models.loading import resolve
from recbrew.models.tokenizers import load_tokenizer
from recbrew.scoring.answers import AnswerWords, normalize


class VLLMScorer:
    def __init__(self, model: str, *, catalog=None, tasks_dir=None, max_model_len: int = 4096,
                 prefix_caching: bool = True, name: str | None = None, dtype: str = "float32"):
        """``model``: a plain Hugging Face folder or ``smollm2`` (`load_vllm_scorer` also takes a LoRA run).
        ``catalog``: the task specs whose answer words are scored (as every other scorer takes them, e.g. an
        examples folder's `Examples.catalog()`); else those of ``tasks_dir`` or the shipped catalog."""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # Offline scoring has no HTTP front end to keep a core for: every core computes (by default vLLM's CPU
        # backend reserves one, which on 2 cores halves the arithmetic).
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout stays the caller's (--json)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from vllm import LLM

        path = resolve(model)
        self.tokenizer = load_tokenizer(str(path))
        self.llm = LLM(model=str(Path(path)), dtype=dtype, enforce_eager=True, max_model_len=max_model_len,
                       enable_prefix_caching=prefix_caching)
        self.name = name or f"vllm:{Path(path).name}"
        self.answers = AnswerWords(self.tokenizer, catalog, tasks_dir)
        #: A merged copy of a LoRA run, written for the engine (`load_vllm_scorer`), removed with the scorer.
        self.merged: tempfile.TemporaryDirectory | None = None

    def reset_cache(self) -> None:
        """Forget the cached prefixes (a benchmark round then pays for them as eval does)."""
        self.llm.reset_prefix_cache()

    def score(self, requests: Sequence[dict]) -> list[np.ndarray]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, owners, params = [], [], []
        for i, row in enumerate(requests):
            if row.get("kind") == "generative":
                raise UserError(f"request {row.get('request_id')}: generative tasks are not scored by P(answer)")
            labels = self.answers(row["task"])
            ids = self.tokenizer([row["prefix"], *row["segments"]], add_special_tokens=False)["input_ids"]
            for seg in ids[1:]:
                prompts.append(TokensPrompt(prompt_token_ids=ids[0] + seg))
                owners.append(i)
                params.append(SamplingParams(max_tokens=1, temperature=0.0, logprobs=len(labels),
                                             logprob_token_ids=labels))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        per_request: list[list[list[float]]] = [[] for _ in requests]
        for owner, out, p in zip(owners, outputs, params, strict=True):
            step = out.outputs[0].logprobs[0]
            per_request[owner].append([step[t].logprob for t in p.logprob_token_ids])
        return [normalize(lps, row.get("kind") == "listwise") for row, lps in zip(requests, per_request, strict=True)]

    def generate(self, requests: Sequence[dict], max_new_tokens: int = 16) -> list[str]:
        """Greedy continuation of ``prefix + segments[0]`` for each request, cut at the first line break (as the
        HF scorer's `generate`)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from recbrew.scoring.hf import first_line, generation_prompt  # lazy: loads torch

        prompts = [TokensPrompt(prompt_token_ids=self.tokenizer(generation_prompt(row), add_special_tokens=False)
                                ["input_ids"]) for row in requests]
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, skip_special_tokens=True)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [first_line(out.outputs[0].text) for out in outputs]


def load_vllm_scorer(spec: str, *, catalog, name: str | None = None, dtype: str = "auto", layers: int | None = None,
                     device: str | None = None, max_model_len: int = 4096) -> VLLMScorer:
    """The VLLMScorer of a language-model spec (``smollm2``, an HF folder, or a LoRA run: merged into a temporary
    folder first, as vLLM reads plain folders), computing in ``dtype`` (``auto``: bf16 where the hardware has bf16
    arithmetic, else fp32)."""
    import torch

    from recbrew.models.loading import resolve_dtype  # lazy: loads torch

    if layers is not None:
        raise UserError(f"model {spec!r}: vLLM scores every decoder layer its folder has; keeping the first "
                        f"{layers} is for the hf engine")
    on = device or ("cuda" if torch.cuda.is_available() else "cpu")
    engine_dtype = str(resolve_dtype(dtype, on)).removeprefix("torch.")  # float32 or bfloat16, as vLLM names them
    path = resolve(spec)
    merged = None
    if (path / "adapter_config.json").is_file():
        from recbrew.train.export import export  # lazy: loads torch and peft

        merged = tempfile.TemporaryDirectory(prefix="recbrew-vllm-")
        path = export(path, Path(merged.name) / "model")
    scorer = VLLMScorer(str(path), catalog=catalog, name=name, dtype=engine_dtype, max_model_len=max_model_len)
    scorer.merged = merged
    return scorer

