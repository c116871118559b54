"""Generative tasks (next job title, skill suggestion): greedy generation scored by exact match and token F1."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}«»]")


def normalize(text: str | None) -> str:
    """Lower case, punctuation dropped, whitespace collapsed (so 'Data  Engineer.' == 'data engineer')."""
    return " ".join(_PUNCT.sub(" ", (text or "").lower()).split())


def exact_match(prediction: str | None, target: str | None) -> float:
    return float(normalize(prediction) == normalize(target))


def token_f1(prediction: str | None, target: str | None) -> float:
    """Harmonic mean of token precision and recall (multiset overlap of normalized words)."""
    pred, gold = normalize(prediction).split(), normalize(target).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def generation_scores(predictions: Sequence[str | None], targets: Sequence[str | None]) -> dict[str, np.ndarray]:
    """Per-request exact match and token F1."""
    return {"exact": np.array([exact_match(p, t) for p, t in zip(predictions, targets, strict=True)]),
            "f1": np.array([token_f1(p, t) for p, t in zip(predictions, targets, strict=True)])}


def first_line(text: str) -> str:
    """The answer part of a generation: up to the first line break, trimmed."""
    return text.strip().split("\n", 1)[0].strip()


def greedy_generate(model, tokenizer, requests: Sequence[dict], max_new_tokens: int = 16) -> list[str]:
    """Greedy continuation of ``prefix + segments[0]`` for each request, cut at the first line break."""
    import torch

    decode = tokenizer.backend.decode if hasattr(tokenizer, "backend") else tokenizer.decode
    device = model.get_output_embeddings().weight.device
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else model.config.eos_token_id
    out = []
    with torch.no_grad():
        for row in requests:
            text = row["prefix"] + (row["segments"][0] if row.get("segments") else "")
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            prompt = torch.tensor([ids], device=device)
            gen = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad)
            out.append(first_line(decode(gen[0, len(ids):].tolist(), skip_special_tokens=True)))
    return out
