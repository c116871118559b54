"""The trainers: TRL's SFT and DPO trainers with the loss read at answer positions only.

`AnswerSFTTrainer` keeps everything TRL's `SFTTrainer` gives (PEFT wrapping, DeepSpeed, Liger,
checkpoints and exact resume, logging) and replaces the loss: the model's LM head runs on the
answer positions only (`logits_to_keep`), so no [tokens x vocab] logits tensor is built, and packed
units carry their multi-item layout to the attention.

`AnswerDPOTrainer` is TRL's `DPOTrainer` on pairs of one member's engaged vs non-engaged candidates:
prompt = the member's prefix, chosen/rejected = a candidate segment followed by the positive answer
word. Only that answer word is the completion whose log-probability DPO compares; the candidate
text is context.
"""

from __future__ import annotations

import math
from contextlib import ExitStack

import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from trl import DPOTrainer, SFTTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from recbrew import metrics
from recbrew.data.io import atomic_path, atomic_write_text


def answer_logits(model, inputs: dict) -> torch.Tensor:
    """[M, V] logits at the answer positions of a collated batch (the LM head runs nowhere else)."""
    cols = inputs["answer_cols"]
    keep, where = torch.unique(cols, sorted=True, return_inverse=True)
    out = model(**_decoder_kwargs(inputs), logits_to_keep=keep, use_cache=False)
    return out.logits[inputs["answer_rows"], where]


def _decoder_kwargs(inputs: dict) -> dict:
    kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids")}
    if "multi_item" in inputs:
        kwargs["multi_item"] = inputs["multi_item"]
    return kwargs


def vocab_loss(model, inputs: dict) -> torch.Tensor:
    """Mean full-vocabulary cross-entropy of the answer tokens through the fused answer head
    (`recbrew.kernels.answer_head`): the log-sum-exp over the vocabulary is taken in chunks, so no
    [answers x vocab] logits tensor is kept for the backward pass."""
    from recbrew.kernels.answer_head import answer_head  # lazy: loads triton

    head = model.get_output_embeddings()
    if head.weight.numel() == 0 or getattr(head, "bias", None) is not None:
        # Partitioned (ZeRO-3: the weight exists inside the forward only) or biased heads: plain logits.
        logits = answer_logits(model, inputs).float()
        return F.cross_entropy(logits, inputs["answer_ids"].to(logits.device))
    hidden = model.get_decoder()(**_decoder_kwargs(inputs), use_cache=False).last_hidden_state
    width = hidden.shape[1]
    positions = inputs["answer_rows"].to(hidden.device) * width + inputs["answer_cols"].to(hidden.device)
    targets = inputs["answer_ids"].to(hidden.device)
    words, place = torch.unique(targets, return_inverse=True)
    out = answer_head(hidden.to(head.weight.dtype), positions, head.weight, words, full_vocab=True)
    return -out.full_logprobs.gather(1, place[:, None]).mean()


def answer_loss(model, inputs: dict, over: str = "vocab") -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's answer tokens.

    ``over="vocab"``: over the full vocabulary (`vocab_loss`). ``over="choices"``: over the answer's choice
    words only (yes/no, the slot letters), the normalization the scorer ranks by; answers without choices
    (generative targets) keep the full vocabulary.
    """
    if over == "vocab" or "answer_choices" not in inputs:
        return vocab_loss(model, inputs)
    logits = answer_logits(model, inputs).float()
    targets = inputs["answer_ids"].to(logits.device)
    choices = inputs["answer_choices"].to(logits.device)
    valid = choices >= 0
    picked = logits.gather(1, choices.clamp(min=0)).masked_fill(~valid, float("-inf"))
    has = valid.any(1)
    # The target's place among its choices (every target is one of them by construction).
    place = (choices == targets[:, None]).float().argmax(1)
    losses = torch.empty_like(targets, dtype=logits.dtype)
    if has.any():
        losses[has] = F.cross_entropy(picked[has], place[has], reduction="none")
    if (~has).any():
        losses[~has] = F.cross_entropy(logits[~has], targets[~has], reduction="none")
    return losses.mean()


class _StopAtBudget:
    """A run resumed from a checkpoint that already holds its whole step budget trains no further step.

    The Trainer checks ``max_steps`` after each optimizer step, so a run killed after its last checkpoint but
    before ``final/`` was written would, on resume, train one step past the budget whenever the budget is not a
    whole number of epochs. Here the batches run dry instead: the checkpoint's weights are what ``final/`` gets.
    """

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, device)


class AnswerSFTTrainer(_StopAtBudget, SFTTrainer):
    """TRL SFT with the loss on answer tokens only, read through an answer-positions-only LM head."""

    def __init__(self, *args, frozen_cache=None, answer_layer=None, loss_over: str = "vocab", **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_over = loss_over
        # The loss is a per-micro-batch mean: let the Trainer divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        #: A `FrozenLayerCache` (``cache_frozen``): batches carrying ``unit_index`` read their frozen layers from it.
        self.frozen_cache = frozen_cache
        #: An `AnswerOnlyTopLayer`: the top layer runs at the batch's answer positions only.
        self.answer_layer = answer_layer

    def _answer_loss(self, model, inputs) -> torch.Tensor:
        index = inputs.pop("unit_index", None)
        with ExitStack() as scope:
            if self.frozen_cache is not None and index is not None:
                scope.enter_context(self.frozen_cache.batch(index.tolist(), inputs["attention_mask"].sum(1).tolist()))
            if self.answer_layer is not None:
                scope.enter_context(self.answer_layer.positions(inputs["answer_rows"], inputs["answer_cols"]))
            return answer_loss(model, inputs, self.loss_over)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self._answer_loss(model, inputs)
        mode = "train" if model.training else "eval"
        self._metrics[mode]["answers"].append(float(len(inputs["answer_ids"])))
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self._answer_loss(model, inputs)
        return loss.detach(), None, None


class AnswerPreferenceCollator(DataCollatorForPreference):
    """TRL's preference batches with the completion narrowed to the answer word.

    The chosen/rejected completions are ``candidate segment + answer word + EOS``; DPO must compare
    log P(answer | prefix, candidate) only, so every completion token but the answer word is masked out.
    """

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        mask = batch["completion_mask"]
        # The answer word is the second-to-last completion token (the last is EOS).
        last = mask.shape[1] - 1 - torch.flip(mask, dims=[1]).argmax(dim=1)
        narrowed = torch.zeros_like(mask)
        narrowed[torch.arange(len(mask)), last - 1] = 1
        batch["completion_mask"] = narrowed
        return batch


class AnswerDPOTrainer(_StopAtBudget, DPOTrainer):
    """TRL DPO over engaged vs non-engaged candidates of one member (see the module docstring)."""


class ValidationCallback(TrainerCallback):
    """Macro AUC of the validation requests, every ``every`` steps and at the end; keeps the best step.

    With ``keep_best`` the trainable weights of the evaluated step with the best macro AUC are kept (in memory, and
    under ``best_dir`` with the evaluation history so a resumed run keeps choosing among every step). The
    evaluation before the first step (``at_start``) is reported but never chosen: it is not a training result.
    """

    STATE, INFO = "trainable.safetensors", "best.json"

    def __init__(self, scorer_factory, requests, every: int, log, at_start: bool = False, keep_best: bool = False,
                 best_dir=None):
        self.scorer_factory, self.requests, self.every, self.log = scorer_factory, requests, every, log
        self.at_start, self.keep_best, self.best_dir = at_start, keep_best, best_dir
        self.history: list[dict] = []
        #: {"step", "val_macro_auc", "state"} of the best evaluated step so far (``keep_best``).
        self.best: dict | None = None

    # The best step, kept and restored -------------------------------------------------------------------
    @staticmethod
    def trainable_state(model) -> dict[str, torch.Tensor]:
        return {n.removeprefix("module."): p.detach().to("cpu", copy=True).contiguous()
                for n, p in model.named_parameters() if p.requires_grad}

    def restore_best(self, model) -> None:
        """Copy the best step's trainable weights back into ``model``."""
        state = self.best["state"]
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.removeprefix("module.") in state:
                    p.copy_(state[n.removeprefix("module.")].to(device=p.device, dtype=p.dtype))

    def resume(self, step: int) -> None:
        """Take back the history and best step written by an interrupted run, up to ``step`` (its checkpoint)."""
        import json

        from safetensors.torch import load_file

        if self.best_dir is None or not (self.best_dir / self.INFO).is_file():
            return
        info = json.loads((self.best_dir / self.INFO).read_text())
        self.history = [h for h in info.get("history", []) if h["step"] <= step]
        best = info.get("best")
        if self.keep_best and best and best["step"] <= step and (self.best_dir / self.STATE).is_file():
            self.best = {**best, "state": load_file(str(self.best_dir / self.STATE))}

    def _write(self, state) -> None:
        import json

        from safetensors.torch import save_file

        if self.best_dir is None or not state.is_world_process_zero:
            return
        self.best_dir.mkdir(parents=True, exist_ok=True)
        best = None if self.best is None else {k: v for k, v in self.best.items() if k != "state"}
        if self.best is not None and self.best.get("fresh"):
            with atomic_path(self.best_dir / self.STATE) as tmp:
                save_file(self.best["state"], str(tmp))
            self.best["fresh"] = False
            best.pop("fresh", None)
        atomic_write_text(self.best_dir / self.INFO, json.dumps({"best": best, "history": self.history}, indent=2))

    # Evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, step: int, model, state=None, chooseable: bool = True) -> dict:
        was_training = model.training
        model.eval()
        probs = self.scorer_factory(model).score(self.requests)
        model.train(was_training)
        aucs = [t["auc"] for t in metrics.per_task_auc(self.requests, probs).values() if t["auc"] is not None]
        macro = metrics.macro(aucs)
        macro = math.nan if macro is None else macro
        entry = {"step": step, "val_macro_auc": macro, "val_tasks": len(aucs)}
        self.history.append(entry)
        self.log(entry)
        if self.keep_best and chooseable and not math.isnan(macro) and (
                self.best is None or macro > self.best["val_macro_auc"]):
            self.best = {"step": step, "val_macro_auc": macro, "state": self.trainable_state(model), "fresh": True}
        if state is not None:
            self._write(state)
        return entry

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.at_start and self.requests and not any(h["step"] == state.global_step for h in self.history):
            self.evaluate(state.global_step, model, state, chooseable=state.global_step > 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and self.requests and state.global_step % self.every == 0 \
                and state.global_step < state.max_steps:
            self.evaluate(state.global_step, model, state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.requests and not any(h["step"] == state.global_step for h in self.history):
            self.evaluate(state.global_step, model, state)
