"""`VLLMScorer`: offline batch scoring of examples through `vllm.LLM` (same prompts as the HF scorer).

Scripts that build a `vllm.LLM` need an ``if __name__ == "__main__":`` guard: the engine starts
worker processes that re-import the main module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recbrew.errors import UserError
from recbrew.models.loading import resolve
from recbrew.models.tokenizers import load_tokenizer
from recbrew.scoring.answers import AnswerWords, normalize


class VLLMScorer:
    def __init__(self, model: str, *, catalog=None, tasks_dir=None, max_model_len: int = 4096,
                 prefix_caching: bool = True, name: str | None = None):
        """``catalog``: the task specs whose answer words are scored (as every other scorer takes them, e.g. an
        examples folder's `Examples.catalog()`); else those of ``tasks_dir`` or the shipped catalog."""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from vllm import LLM

        path = resolve(model)
        self.tokenizer = load_tokenizer(str(path))
        self.llm = LLM(model=str(Path(path)), dtype="float32", enforce_eager=True, max_model_len=max_model_len,
                       enable_prefix_caching=prefix_caching)
        self.name = name or f"vllm:{Path(path).name}"
        self.answers = AnswerWords(self.tokenizer, catalog, tasks_dir)

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
