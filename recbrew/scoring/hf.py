"""Score ranking requests with a Hugging Face causal LM: P(answer word) at the answer position.

Three execution modes give the same probabilities (fp32, within 1e-4):

- ``naive``: one full prompt (prefix + segment) per candidate, batched with right padding;
- ``prefix``: the member's prefix runs once into a KV cache, every candidate segment continues
  from a copy of it;
- ``multi``: one sequence = prefix + K candidate segments. Each segment token sees the prefix and
  the earlier tokens of its own segment only (recbrew's multi-item attention, registered as a
  Hugging Face attention function and described by segment lengths, not a dense mask), and
  positions restart after the prefix for every segment, so each segment is computed exactly as if
  it followed the prefix alone. Several requests are packed into one pass, each a document of its
  own (prefix + its segments; no padding, positions restarting per document), up to
  ``max_pass_tokens``; a request whose candidates do not fit is split into several documents that
  repeat its prefix. One forward pass thus serves many requests, which on a GPU removes the
  per-request launch overhead.

Only the hidden states at answer positions meet the LM head, and only its answer-word rows: no
[tokens x vocab] logits tensor is ever built.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recbrew.errors import UserError
from recbrew.models.loading import load_model
from recbrew.scoring.answers import AnswerWords, normalize

MODES = ("naive", "prefix", "multi")
# Stands in for the attention mask of multi-item calls, which the multi-item attention never reads.
_LAYOUT_ONLY = torch.ones(1, 1, 0, 0, dtype=torch.bool)


@dataclass
class Encoded:
    prefix: list[int]
    segments: list[list[int]]
    label_ids: list[int]
    listwise: bool


def multi_item_positions(prefix_len: int, segment_lens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids (restarting after the prefix for every segment) and each segment's answer index."""
    positions = torch.cat([torch.arange(prefix_len)] + [prefix_len + torch.arange(n) for n in segment_lens])
    ends = prefix_len + torch.cumsum(torch.tensor(segment_lens), 0) - 1
    return positions, ends


class HFScorer:
    """The Scorer of a causal LM; ``mode`` picks how candidates share the member's prefix."""

    def __init__(self, model, tokenizer, *, mode: str = "multi", tasks_dir=None, catalog=None, batch_size: int = 16,
                 max_pass_tokens: int | None = None, name: str | None = None, answer_only_top: bool | None = None):
        if mode not in MODES:
            raise UserError(f"unknown scoring mode {mode!r}; choose one of {', '.join(MODES)}")
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.tasks_dir, self.batch_size = tasks_dir, batch_size
        if mode == "multi":
            # Segment-aware attention (O(tokens) memory, no dense L x L mask); plain SDPA otherwise.
            from recbrew.kernels.hf_attention import ATTN_NAME, register  # lazy: loads triton

            if model.config._attn_implementation != ATTN_NAME:
                model.set_attn_implementation(register())
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        #: Tokens per multi-item pass (default 16,384 on CUDA, 8,192 elsewhere); one document (a request's
        #: prefix + some of its segments) also stays within the model's positions.
        on_cuda = self.head.weight.is_cuda
        self.max_pass_tokens = max_pass_tokens or (16384 if on_cuda else 8192)
        self.max_document_tokens = min(self.max_pass_tokens, getattr(model.config, "max_position_embeddings", 4096))
        #: Multi mode: the top layer runs at the answer positions only (keys and values everywhere), the
        #: only outputs scoring reads; on by default on CPU, where it saves most of a layer's work.
        self.top = self._answer_only_top(answer_only_top, on_cuda) if mode == "multi" else None
        self.name = name or f"{getattr(model.config, '_name_or_path', 'model') or 'model'}:{mode}"
        #: Answer-word ids by task: from ``catalog`` (e.g. an examples folder's recorded specs), else from
        #: ``tasks_dir`` or the shipped catalog.
        self.answers = AnswerWords(tokenizer, catalog, tasks_dir)
        #: Tokens run through the model by the last `score` call (for benchmarks).
        self.tokens_processed = 0

    def _answer_only_top(self, wanted: bool | None, on_cuda: bool):
        from recbrew.models.answer_layer import AnswerOnlyTopLayer, supports  # lazy: loads transformers

        layers = getattr(self.decoder, "layers", None)
        if wanted is False or (wanted is None and on_cuda) or not layers or not supports(layers[-1]):
            return None
        if "forward" in vars(layers[-1]):  # already wrapped (a training run's own answer-only layer)
            return None
        return AnswerOnlyTopLayer(layers[-1])

    # Requests -> token ids --------------------------------------------------------------------
    def label_ids(self, task_name: str) -> list[int]:
        return self.answers(task_name)

    def encode(self, row: dict) -> Encoded:
        if row.get("kind") == "generative":
            raise UserError(f"request {row.get('request_id')}: generative tasks are scored by generation, not P(answer)")
        ids = self.tokenizer([row["prefix"], *row["segments"]], add_special_tokens=False)["input_ids"]
        return Encoded(ids[0], ids[1:], self.label_ids(row["task"]), row.get("kind") == "listwise")

    # Hidden states -> probabilities -----------------------------------------------------------
    def _answer_logits(self, hidden: torch.Tensor, label_ids: Sequence[int]) -> np.ndarray:
        """The answer words' logits at ``hidden``, computed in fp32 whatever the model's dtype.

        A bf16 product would round each logit to bf16 (a step of 1/16 near 10), so a bf16 model's
        P(yes) would take a few hundred distinct values over a test set (615 over 3,306 candidates of
        the quickstart): ties that order a slate arbitrarily and hide small score moves. The hidden
        states and head rows are exact in fp32, and the product costs a few rows per candidate.
        """
        ids = list(label_ids)
        logits = hidden.float() @ self.head.weight[ids].float().T
        if getattr(self.head, "bias", None) is not None:
            logits = logits + self.head.bias[ids].float()
        return logits.cpu().numpy()

    def _answer_probs(self, hidden: torch.Tensor, enc: Encoded) -> np.ndarray:
        return normalize(self._answer_logits(hidden, enc.label_ids), enc.listwise)

    def _run(self, input_ids, use_cache: bool = False, **kwargs):
        device = self.head.weight.device
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return self.decoder(input_ids=input_ids.to(device), use_cache=use_cache, **moved)

    # Modes --------------------------------------------------------------------------------------
    def _naive(self, encoded: list[Encoded]) -> list[np.ndarray]:
        flat = [(i, p.prefix + s) for i, p in enumerate(encoded) for s in p.segments]
        hidden = [None] * len(flat)
        for start in range(0, len(flat), self.batch_size):
            batch = flat[start:start + self.batch_size]
            width = max(len(ids) for _, ids in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for b, (_, seq) in enumerate(batch):
                ids[b, : len(seq)] = torch.tensor(seq)
                mask[b, : len(seq)] = 1
            states = self._run(ids, attention_mask=mask).last_hidden_state
            last = mask.sum(1) - 1
            for b in range(len(batch)):
                hidden[start + b] = states[b, last[b]]
            self.tokens_processed += int(mask.sum())
        out, k = [], 0
        for enc in encoded:
            n = len(enc.segments)
            out.append(self._answer_probs(torch.stack(hidden[k:k + n]), enc))
            k += n
        return out

    def _prefix(self, encoded: list[Encoded]) -> list[np.ndarray]:
        out = []
        for enc in encoded:
            plen = len(enc.prefix)
            prefix_out = self._run(torch.tensor([enc.prefix]), use_cache=True)
            self.tokens_processed += plen
            rows = []
            for start in range(0, len(enc.segments), self.batch_size):
                segs = enc.segments[start:start + self.batch_size]
                width = max(len(s) for s in segs)
                ids = torch.zeros(len(segs), width, dtype=torch.long)
                mask = torch.zeros(len(segs), plen + width, dtype=torch.long)
                mask[:, :plen] = 1
                for b, seq in enumerate(segs):
                    ids[b, : len(seq)] = torch.tensor(seq)
                    mask[b, plen:plen + len(seq)] = 1
                cache = copy.deepcopy(prefix_out.past_key_values)
                cache.batch_repeat_interleave(len(segs))
                positions = (plen + torch.arange(width))[None].expand(len(segs), -1)
                states = self._run(ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                                   use_cache=True).last_hidden_state
                for b, seq in enumerate(segs):
                    rows.append(states[b, len(seq) - 1])
                self.tokens_processed += sum(len(s) for s in segs)
            out.append(self._answer_probs(torch.stack(rows), enc))
        return out

    def _passes(self, enc: Encoded) -> list[list[int]]:
        """Segment indices per document: as many as fit ``max_document_tokens`` after the prefix (at least one)."""
        passes, current, used = [], [], len(enc.prefix)
        for j, seg in enumerate(enc.segments):
            if current and used + len(seg) > self.max_document_tokens:
                passes.append(current)
                current, used = [], len(enc.prefix)
            current.append(j)
            used += len(seg)
        passes.append(current)
        return passes

    def _packs(self, encoded: list[Encoded]) -> list[list[tuple[int, list[int]]]]:
        """Documents (request index, segment indices) grouped into passes of at most ``max_pass_tokens``."""
        packs, current, used = [], [], 0
        for i, enc in enumerate(encoded):
            for group in self._passes(enc):
                size = len(enc.prefix) + sum(len(enc.segments[j]) for j in group)
                if current and used + size > self.max_pass_tokens:
                    packs.append(current)
                    current, used = [], 0
                current.append((i, group))
                used += size
        return packs + [current] if current else packs

    def _multi(self, encoded: list[Encoded]) -> list[np.ndarray]:
        rows: list[list] = [[None] * len(enc.segments) for enc in encoded]
        for pack in self._packs(encoded):
            ids, positions, prefixes, seg_lens, ends, owners = [], [], [], [], [], []
            for i, group in pack:
                enc = encoded[i]
                segs = [enc.segments[j] for j in group]
                lens = [len(s) for s in segs]
                pos, end = multi_item_positions(len(enc.prefix), lens)
                ends.append(end + len(ids))
                owners.extend((i, j) for j in group)
                ids += enc.prefix + [t for s in segs for t in s]
                positions.append(pos)
                prefixes.append(len(enc.prefix))
                seg_lens.append(lens)
            # A 4-D mask reaches the layers as it is, so Hugging Face builds no L x L mask (the positions
            # restart, which it would read as packed sequences); the layout replaces the mask.
            answer_cols = torch.cat(ends)
            with self._top_at(answer_cols):
                states = self._run(torch.tensor([ids]), position_ids=torch.cat(positions)[None],
                                   attention_mask=_LAYOUT_ONLY,
                                   multi_item=([prefixes], [seg_lens])).last_hidden_state[0]
            picked = states[answer_cols.to(states.device)]  # one gather per pass
            for k, (i, j) in enumerate(owners):
                rows[i][j] = picked[k]
            self.tokens_processed += len(ids)
        return self._answers_batched([torch.stack(r) for r in rows], encoded)

    @contextlib.contextmanager
    def _top_at(self, cols: torch.Tensor):
        """The top layer computed at ``cols`` of the (single) sequence only, for the enclosed forward."""
        if self.top is None:
            yield
            return
        self.top.install()
        try:
            with self.top.positions(torch.zeros_like(cols), cols):
                yield
        finally:
            self.top.uninstall()

    def _answers_batched(self, hidden: list[torch.Tensor], encoded: list[Encoded]) -> list[np.ndarray]:
        """``_answer_probs`` for many requests: one LM-head product and one copy to the host per answer-word set."""
        out: list = [None] * len(encoded)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, enc in enumerate(encoded):
            groups.setdefault(tuple(enc.label_ids), []).append(i)
        for label_ids, members in groups.items():
            logits = self._answer_logits(torch.cat([hidden[i] for i in members]), label_ids)
            start = 0
            for i in members:
                n = len(encoded[i].segments)
                out[i] = normalize(logits[start:start + n], encoded[i].listwise)
                start += n
        return out

    @torch.no_grad()
    def score_encoded(self, encoded: list[Encoded]) -> list[np.ndarray]:
        self.tokens_processed = 0
        return {"naive": self._naive, "prefix": self._prefix, "multi": self._multi}[self.mode](encoded)

    def score(self, requests: Sequence[dict]) -> list[np.ndarray]:
        return self.score_encoded([self.encode(r) for r in requests])

    # Generation (the `Generator` protocol) ------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: Sequence[dict], max_new_tokens: int = 16) -> list[str]:
        """Greedy continuation of ``prefix + segments[0]`` for each request, cut at the first line break."""
        from transformers import StoppingCriteriaList

        tok = self.tokenizer
        decode = tok.backend.decode if hasattr(tok, "backend") else tok.decode
        device = self.head.weight.device
        config = self.model.config
        pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        out = []
        for row in requests:
            ids = tok(generation_prompt(row), add_special_tokens=False)["input_ids"]
            prompt = torch.tensor([ids], device=device)
            gen = self.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                      max_new_tokens=max_new_tokens, pad_token_id=pad,
                                      stopping_criteria=StoppingCriteriaList([_LineDone(len(ids), decode)]))
            out.append(first_line(decode(gen[0, len(ids):].tolist(), skip_special_tokens=True)))
        return out


class _LineDone:
    """Stops a one-sequence greedy generation once its answer line is complete: a line break after some text
    (what `first_line` keeps is then fixed, so the tokens after it would be thrown away)."""

    def __init__(self, start: int, decode):
        self.start, self.decode = start, decode

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        text = self.decode(input_ids[0, self.start:].tolist(), skip_special_tokens=True).lstrip()
        return torch.full((input_ids.shape[0],), "\n" in text, dtype=torch.bool, device=input_ids.device)


def generation_prompt(row: dict) -> str:
    """What a generative request is continued from: its prefix and its (single) segment."""
    return row["prefix"] + (row["segments"][0] if row.get("segments") else "")


def first_line(text: str) -> str:
    """The answer part of a generation: up to the first line break, trimmed."""
    return text.strip().split("\n", 1)[0].strip()


def load_hf_scorer(spec: str, *, catalog, mode: str = "multi", name: str | None = None, device: str | None = None,
                   dtype="auto", layers: int | None = None) -> HFScorer:
    """The HFScorer of a model spec (`recbrew.models.loading.load_model`: ``smollm2``, a recbrew-tiny, HF or LoRA
    folder), in ``dtype`` (``auto``: bf16 where the hardware has bf16 arithmetic), with the answer words of
    ``catalog``. Module-level, so Ray actors can build one by reference (`recbrew.cluster.score_on_ray`)."""
    model, tokenizer = load_model(spec, device=device, dtype=dtype, layers=layers)
    return HFScorer(model, tokenizer, mode=mode, name=name, catalog=catalog)
