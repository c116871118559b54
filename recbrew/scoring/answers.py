"""Answer words: their token ids per task, and the normalization every scorer ranks by.

A task answers with single-token words (``yes``/``no``, the slot letters ``A``..``D``) that follow
``Answer:`` after a space. A model's score for a request is its distribution over those words only:

- binary: P(first word) of each candidate, normalized over the task's words;
- listwise: the distribution over the slots (it sums to 1): over the slot letters of the one prompt, or
  (``scoring: options``) over the options' log-odds, each option answered like a binary candidate.

The HF scorer, the vLLM scorer, `/v1/rank` and the trainer's ``answer_loss: choices`` all use this
module, so a model is trained and ranked by the same normalization.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from recbrew.errors import UserError
from recbrew.tasks import load_catalog


def answer_token_ids(task, tokenizer) -> list[int]:
    """Token id of each answer word as it follows `Answer:` (with a leading space); one token each."""
    ids = []
    for word in task.answer.words:
        pieces = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise UserError(
                f"task {task.name}: answer word {word!r} is {len(pieces)} tokens for this tokenizer; "
                "choose words that are a single token after a space (e.g. yes/no, A/B/C/D)"
            )
        ids.append(pieces[0])
    return ids


class AnswerWords:
    """Answer-word token ids by task name, looked up once per task.

    The task specs come from ``catalog`` (e.g. the specs an examples folder recorded, see
    `recbrew.examples.folder.Examples.catalog`), else from ``tasks_dir`` or the shipped catalog.
    """

    def __init__(self, tokenizer, catalog: Mapping | None = None, tasks_dir=None):
        self.tokenizer, self.tasks_dir = tokenizer, tasks_dir
        self.catalog = dict(catalog) if catalog is not None else None
        self._ids: dict[str, list[int]] = {}

    def spec(self, task_name: str):
        if self.catalog is None:
            self.catalog = load_catalog(self.tasks_dir)
        if task_name not in self.catalog:
            raise UserError(f"unknown task {task_name!r} in the requests; score them with the task specs of their "
                            "examples folder (recbrew.examples.folder.Examples.catalog) or rebuild the examples "
                            "with `recbrew data build`")
        return self.catalog[task_name]

    def __call__(self, task_name: str) -> list[int]:
        if task_name not in self._ids:
            self._ids[task_name] = answer_token_ids(self.spec(task_name), self.tokenizer)
        return self._ids[task_name]


def normalize(logits, listwise: bool) -> np.ndarray:
    """Scores from answer-word logits (or log-probabilities) ``[segments, words]``.

    Binary: softmax over the words, P(first word) per candidate. Listwise: one row (``scoring: letters``) ->
    the slot distribution of the one prompt; one row per option (``scoring: options``) -> softmax over the
    options of their log-odds (positive minus negative word), the distribution over the slots either way.
    """
    z = np.asarray(logits, dtype=np.float64)
    if listwise and len(z) > 1:
        z = (z[:, 0] - z[:, 1])[None, :]
    z = z - z.max(axis=-1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=-1, keepdims=True)
    return (probs[0] if listwise else probs[:, 0]).astype(np.float32)
