"""Training data: requests -> token sequences whose loss sits on answer tokens only.

A *labelled item* is one candidate segment and the answer tokens that follow it (the label word of a
binary candidate or listwise option, the letter of a listwise question's positive slot, or a generative target and
EOS). The segment is extended by all answer tokens but the last, and the model is trained to
predict each answer token from the position before it.

A *unit* is one training sequence: a request's prefix followed by one item (unpacked) or up to K
items (multi-item packing). Packed items attend to the prefix and to themselves only, with positions
restarting after the prefix, so a packed unit gives the same per-item losses as K unpacked units
while encoding the history once.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recbrew.errors import UserError

#: The validation requests held out of training are at most this share of the training requests.
MAX_HOLDOUT_SHARE = 0.2


@dataclass
class Item:
    segment: list[int]
    answers: list[int]
    task: str
    #: The words the answer is chosen from (binary: positive, negative; listwise: the slot letters);
    #: None for generative targets (the whole vocabulary).
    choices: list[int] | None = None


def request_items(row: dict, prefix: list[int], segments: list[list[int]], label_ids: list[int],
                  target: list[int] | None) -> list[Item]:
    """The labelled items of one request (tokenized)."""
    kind, task = row["kind"], row["task"]
    if kind == "generative":
        return [Item(segments[0], target, task)] if target else []
    if kind == "listwise":
        labels = list(row["labels"])
        if labels.count(1) != 1:
            return []
        if len(segments) == 1 and len(labels) > 1:  # scoring: letters, one prompt answered by the slot's letter
            return [Item(segments[0], [label_ids[labels.index(1)]], task, list(label_ids[:len(labels)]))]
    # Binary candidates, and the options of a listwise question scored by options: each answers positive / negative.
    return [Item(seg, [label_ids[0] if y else label_ids[1]], task, list(label_ids[:2]))
            for seg, y in zip(segments, row["labels"], strict=True)]


def make_unit(prefix: list[int], items: Sequence[Item]) -> dict:
    """One sequence: the prefix, then each item's segment extended by its answers but the last."""
    ids, lens, positions, targets, choices = list(prefix), [], [], [], []
    for item in items:
        ext = item.segment + item.answers[:-1]
        start = len(ids)
        ids.extend(ext)
        lens.append(len(ext))
        # The answer tokens are predicted at the last len(answers) positions of the extended segment.
        first = start + len(item.segment) - 1
        positions.extend(range(first, first + len(item.answers)))
        targets.extend(item.answers)
        # Only a single-token answer is a choice among words; longer (generative) answers use the vocabulary.
        choices.extend([list(item.choices) if item.choices and len(item.answers) == 1 else []
                        for _ in item.answers])
    return {"input_ids": ids, "prefix_len": len(prefix), "segment_lens": lens, "length": len(ids),
            "answer_positions": positions, "answer_ids": targets, "answer_choices": choices,
            "task": items[0].task}


def build_units(rows: Sequence[dict], tokenizer, label_ids_of, eos_id: int | None, *, pack: bool,
                candidates_per_sequence: int) -> list[dict]:
    """Training units of ``rows``: one per labelled item, or one per K items of a request when packing."""
    texts = []
    for r in rows:
        texts.append(r["prefix"])
        texts.extend(r["segments"])
        if r["kind"] == "generative":
            texts.append(" " + (r.get("target") or ""))
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    units, k = [], 0
    for r in rows:
        prefix = ids[k]
        segments = ids[k + 1:k + 1 + len(r["segments"])]
        k += 1 + len(r["segments"])
        target = None
        if r["kind"] == "generative":
            target = ids[k] + ([eos_id] if eos_id is not None else [])
            k += 1
            if not r.get("target"):
                target = None
        labels = [] if r["kind"] == "generative" else label_ids_of(r["task"])
        items = request_items(r, prefix, segments, labels, target)
        step = candidates_per_sequence if pack else 1
        units.extend(make_unit(prefix, items[i:i + step]) for i in range(0, len(items), step))
    return units


def select_requests(rows: Sequence[dict], tasks: Sequence[str] | None, weights: dict[str, float],
                    max_examples: int | None, holdout: int, seed: int,
                    kinds: Sequence[str] | None = None,
                    echo: Callable[[str], object] | None = None) -> tuple[list[dict], list[dict]]:
    """(training requests, held-out validation requests): T1 only, weighted by task, seeded.

    ``kinds`` keeps only tasks of those kinds (binary, listwise, generative). Validation requests are
    binary T1 requests kept out of training (for the periodic AUC): at most a fifth of the training requests,
    whatever ``holdout`` asks; ``echo`` (default: stderr) says so when it asks more.
    """
    if kinds:
        kind_of = {r["task"]: r["kind"] for r in rows}
        other = [f"{t} ({kind_of[t]})" for t in tasks or () if t in kind_of and kind_of[t] not in kinds]
        if other:
            raise UserError(f"tasks {', '.join(other)} are not of the kinds trained ({', '.join(kinds)})")
        rows = [r for r in rows if r["kind"] in kinds]
        if not rows:
            raise UserError(f"no tasks of kind {', '.join(kinds)} in the examples")
    tags = {r["task"]: r["split_tag"] for r in rows}
    if tasks:
        unknown = [t for t in tasks if t not in tags]
        if unknown:
            raise UserError(f"tasks not in the examples: {', '.join(unknown)}; available: {', '.join(sorted(tags))}")
        t2 = [t for t in tasks if tags[t] != "T1"]
        if t2:
            raise UserError(f"{', '.join(t2)}: T2 (out-of-domain) tasks never enter training; pick T1 tasks")
    chosen = set(tasks) if tasks else {t for t, tag in tags.items() if tag == "T1"}
    bad = [t for t in weights if t not in chosen]
    if bad:
        raise UserError(f"task_weights names tasks that are not trained: {', '.join(bad)}")
    if not chosen:
        raise UserError("no T1 tasks in the examples to train on")
    rng = np.random.default_rng(seed)
    pool = [r for r in rows if r["task"] in chosen]
    if not pool:
        raise UserError(f"no training requests for the tasks trained ({', '.join(sorted(chosen))}) in the examples' "
                        "train split; build the examples with more training requests (--max-train, more days) or "
                        "train other tasks")
    order = rng.permutation(len(pool))
    val_ids: set[int] = set()
    if holdout:
        cap = int(len(pool) * MAX_HOLDOUT_SHARE)
        if holdout > cap:
            (echo or _notice)(f"train: eval_requests={holdout} is capped at {cap}: the validation requests held out of "
                 f"training are at most a fifth of the {len(pool)} training requests")
        binary = [i for i in order if pool[i]["kind"] == "binary"]
        val_ids = set(binary[:min(holdout, cap)])
    by_task: dict[str, list[dict]] = {}
    for i in order:
        if i not in val_ids:
            by_task.setdefault(pool[i]["task"], []).append(pool[i])
    train = []
    for task in sorted(by_task):
        reqs, w = by_task[task], float(weights.get(task, 1.0))
        if w < 0:
            raise UserError(f"task_weights.{task}: weights are >= 0")
        whole, frac = int(w), w - int(w)
        train.extend(reqs * whole)
        if frac:
            picks = rng.choice(len(reqs), size=int(round(frac * len(reqs))), replace=False)
            train.extend(reqs[i] for i in sorted(picks))
    if not train:
        raise UserError(f"task_weights leave no training requests (weights {dict(sorted(weights.items()))}); give "
                        "a trained task a weight above 0")
    if max_examples is not None and len(train) > max_examples:
        train = [train[i] for i in sorted(rng.choice(len(train), size=max_examples, replace=False))]
    return train, [pool[i] for i in sorted(val_ids)]


def _notice(text: str) -> None:
    print(text, file=sys.stderr)


def thin_negatives(rows: Sequence[dict], per_positive: float, seed: int) -> list[dict]:
    """Binary requests with negatives dropped at random to about ``per_positive`` per positive, per task.

    Positives are all kept; a request left without candidates is dropped. Other kinds pass unchanged.
    """
    pos: Counter = Counter()
    neg: Counter = Counter()
    for r in rows:
        if r["kind"] == "binary":
            pos[r["task"]] += sum(r["labels"])
            neg[r["task"]] += len(r["labels"]) - sum(r["labels"])
    keep = {t: min(1.0, per_positive * pos[t] / neg[t]) if neg[t] else 1.0 for t in neg}
    rng = np.random.default_rng(seed)
    out = []
    for r in rows:
        if r["kind"] != "binary" or keep[r["task"]] >= 1.0:
            out.append(r)
            continue
        picks = [i for i, y in enumerate(r["labels"]) if y or rng.random() < keep[r["task"]]]
        if picks:
            out.append({**r, "labels": [r["labels"][i] for i in picks],
                        "segments": [r["segments"][i] for i in picks]})
    return out


def task_mix(units: Sequence[dict]) -> dict[str, int]:
    """Labelled items per task (what the mixture really holds)."""
    counts: Counter = Counter()
    for u in units:
        counts[u["task"]] += len(u["segment_lens"])
    return dict(sorted(counts.items()))


class UnitCollator:
    """Pads units into a batch: ids, attention mask, restarting positions, answer coordinates.

    With ``multi_item`` the batch also carries each row's ``(prefix_len, segment_lens)`` layout for the
    multi-item attention; without it the rows are plain causal sequences (one item each). Units that carry an
    ``index`` (their place in the training set) give the batch a ``unit_index`` (the frozen-layer cache's key).
    """

    def __init__(self, pad_id: int, multi_item: bool):
        self.pad_id, self.multi_item = pad_id, multi_item

    def __call__(self, units: Sequence[dict]) -> dict:
        width = max(len(u["input_ids"]) for u in units)
        b = len(units)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(b, width, dtype=torch.long)
        pos = torch.zeros(b, width, dtype=torch.long)
        rows, cols, targets, choices = [], [], [], []
        for i, u in enumerate(units):
            n = len(u["input_ids"])
            ids[i, :n] = torch.tensor(u["input_ids"])
            mask[i, :n] = 1
            p = u["prefix_len"]
            pos[i, :p] = torch.arange(p)
            start = p
            for s in u["segment_lens"]:
                pos[i, start:start + s] = p + torch.arange(s)
                start += s
            rows.extend([i] * len(u["answer_positions"]))
            cols.extend(u["answer_positions"])
            targets.extend(u["answer_ids"])
            choices.extend(u["answer_choices"])
        batch = {"input_ids": ids, "attention_mask": mask, "position_ids": pos,
                 "answer_rows": torch.tensor(rows), "answer_cols": torch.tensor(cols),
                 "answer_ids": torch.tensor(targets)}
        width_c = max((len(c) for c in choices), default=0)
        if width_c:
            # [answers, most choices], -1 where a row has fewer (or none: that answer uses the whole vocabulary).
            batch["answer_choices"] = torch.tensor([c + [-1] * (width_c - len(c)) for c in choices])
        if all("index" in u for u in units):
            batch["unit_index"] = torch.tensor([u["index"] for u in units])
        if self.multi_item:
            batch["multi_item"] = ([u["prefix_len"] for u in units], [list(u["segment_lens"]) for u in units])
        return batch
