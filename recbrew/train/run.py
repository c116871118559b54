"""One fine-tuning run end to end: requests -> units -> TRL trainer -> `final/` folder + `train_log.json`.

Output folder layout::

    OUT/checkpoint-N/      Trainer checkpoints (model/adapter, optimizer, scheduler, RNG): exact resume
    OUT/final/             the adapter (LoRA) or the full model, its tokenizer and `recbrew_train.json`
    OUT/train_log.json     loss and validation-AUC history, the task mix, timings
    OUT/best-val/          the best validation step so far: its trainable weights and the evaluation history
                           (so a resumed run still picks the best step; final/ holds that step)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from recbrew.errors import ConfigError, UserError
from recbrew.examples.folder import Examples, spec_record
from recbrew.models.loading import resolve
from recbrew.models.precision import bf16_wanted, cpu_has_bf16, describe, fast_dtype
from recbrew.scoring.answers import AnswerWords
from recbrew.train.config import TrainConfig

if TYPE_CHECKING:  # the run's state is typed; the stacks themselves load when a run starts
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

    from recbrew.models.answer_layer import AnswerOnlyTopLayer
    from recbrew.train.frozen_cache import FrozenLayerCache
    from recbrew.train.trainer import ValidationCallback
    from recbrew.train.zero import HpzIntegrityCallback

META_FILE = "recbrew_train.json"
LOG_FILE = "train_log.json"
BEST_DIR = "best-val"


@dataclass
class TrainResult:
    out_dir: Path
    model_dir: Path
    """A folder `recbrew.models.loading.load_model` accepts (an adapter folder when LoRA)."""
    final_loss: float
    val_macro_auc: float | None
    steps: int
    seconds: float
    log: dict
    final_step: int | None = None
    """The step final/ holds (the best validation step with ``select_best``, else the last)."""


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete `checkpoint-N` folder in ``out``."""
    done = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1])) if done else None


def _training_args(cfg: TrainConfig, out: Path, progress: bool, cuda: bool, ds_config: dict | None):
    from trl import DPOConfig, SFTConfig

    # On CPU the Trainer's bf16 autocast is never used (it silently breaks CPU runs): bf16 there applies to the
    # frozen layers only (see `frozen_dtype`).
    bf16 = cuda and fast_dtype("cuda", cfg.bf16) == __import__("torch").bfloat16
    common = dict(
        output_dir=str(out), per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        seed=cfg.seed, data_seed=cfg.seed, bf16=bf16, fp16=False, use_cpu=not cuda, report_to="none",
        disable_tqdm=not progress, dataloader_num_workers=0, remove_unused_columns=False,
        gradient_checkpointing=cfg.gradient_checkpointing, deepspeed=ds_config,
        # Sequences of similar length share a batch: far less padding (lengths are precomputed per unit).
        train_sampling_strategy="group_by_length" if cfg.objective == "sft" else "random",
        use_liger_kernel=bool(cfg.liger and cuda),
    )
    if cfg.objective == "dpo":
        return DPOConfig(**common, beta=cfg.dpo_beta, max_length=None)
    return SFTConfig(**common, dataset_kwargs={"skip_prepare_dataset": True},
                     liger_kernel_config={"fused_linear_cross_entropy": False} if common["use_liger_kernel"] else None)


def frozen_dtype(cfg: TrainConfig, cuda: bool):
    """The dtype of the frozen layers on CPU: bf16 where the processor has bf16 arithmetic (or bf16=true), unless
    bf16=false or RECBREW_BF16=0 (None: the model's own fp32)."""
    import torch

    wanted = bf16_wanted(cfg.bf16)
    if cuda or wanted is False:
        return None
    return torch.bfloat16 if wanted or cpu_has_bf16() else None


def _load(cfg: TrainConfig, cuda: bool, pack: bool, out: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recbrew.kernels.hf_attention import register  # lazy: loads triton

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve(cfg.model)
    if (path / "adapter_config.json").is_file():
        raise UserError(f"{path}: is a LoRA adapter; export it first (`recbrew train export`) or train from its base")
    if cfg.layers is not None:
        from recbrew.models.depth import truncated_copy  # lazy: loads torch

        # The adapter's base is this folder: scoring, export and serving load the N-layer model unchanged.
        path = truncated_copy(path, cfg.layers, (out / f"base-L{cfg.layers}").resolve())
    dtype = fast_dtype("cuda", cfg.bf16) if cuda else torch.float32
    # The multi-item attention behaves exactly like SDPA unless a forward carries a layout.
    attn = register() if pack else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return path, model, tok


def lora_config(cfg: TrainConfig, model):
    """The PEFT LoRA config of ``cfg`` for ``model`` (target modules checked against the model)."""
    from peft import LoraConfig

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in names]
    if missing:
        raise ConfigError(f"target_modules {missing} are not modules of {cfg.model}; "
                          f"it has e.g. {', '.join(sorted(n for n in names if n.endswith('proj'))[:8])}")
    layers = None
    if cfg.lora_layers is not None:
        n = getattr(model.config, "num_hidden_layers", None)
        if n is None:
            raise ConfigError(f"lora_layers: {cfg.model} does not say how many layers it has (num_hidden_layers)")
        layers = list(range(max(0, n - cfg.lora_layers), n))
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), layers_to_transform=layers, task_type="CAUSAL_LM")


def validation_requests(folder, cfg: TrainConfig, rows: list[dict], enabled: bool, echo, progress: bool):
    """(training requests, validation requests, where the validation requests come from).

    From the examples' validation split when there is one (the trained tasks' binary and listwise requests, at most
    ``eval_requests`` of them); otherwise ``eval_requests`` binary training requests held out of training, said
    out loud, or none.
    """
    import numpy as np

    from recbrew.train.data import select_requests  # lazy: loads torch

    def select(holdout: int):
        return select_requests(rows, cfg.tasks, cfg.task_weights, cfg.max_examples, holdout, cfg.seed,
                               kinds=cfg.kinds)

    if not enabled or cfg.eval_requests == 0:
        return *select(0), "none"
    if folder.has_split("validation"):
        train_rows, _ = select(0)
        trained = {r["task"] for r in train_rows}
        val = [r for r in folder.requests("validation", sorted(trained))
               if r["kind"] != "generative" and r["labels"]]
        if cfg.eval_requests and len(val) > cfg.eval_requests:
            picks = np.random.default_rng(cfg.seed).choice(len(val), size=cfg.eval_requests, replace=False)
            val = [val[i] for i in sorted(picks)]
        if progress:
            echo(f"train: validation AUC on {len(val):,} requests of the examples' validation split")
        return train_rows, val, "validation split"
    if cfg.eval_requests is None:
        if progress:
            echo(f"train: no validation AUC: {folder.root} has no validation split (build the examples with "
                 "--val-days or --val-fraction, or set eval_requests=N to hold N training requests out)")
        return *select(0), "none"
    train_rows, val = select(cfg.eval_requests)
    if progress:
        echo(f"train: {folder.root} has no validation split: holding {len(val):,} binary training requests out of "
             f"training for the validation AUC (eval_requests={cfg.eval_requests})")
    return train_rows, val, "held out of train"


def _dpo_rows(requests: list[dict], catalog, pairs_per_request: int, seed: int) -> list[dict]:
    """Preference rows: prompt = prefix; chosen/rejected = engaged / non-engaged candidate + positive word."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for r in requests:
        if r["kind"] != "binary":
            continue
        pos = [s for s, y in zip(r["segments"], r["labels"], strict=True) if y]
        neg = [s for s, y in zip(r["segments"], r["labels"], strict=True) if not y]
        if not pos or not neg:
            continue
        word = " " + catalog[r["task"]].answer.words[0]
        for _ in range(pairs_per_request):
            rows.append({"prompt": r["prefix"], "chosen": pos[rng.integers(len(pos))] + word,
                         "rejected": neg[rng.integers(len(neg))] + word})
    return rows


@dataclass
class _Run:
    """What the steps of one training run hand each other."""

    cfg: TrainConfig
    progress: bool
    echo: Callable[[str], None]
    out: Path
    examples: Path
    cuda: bool
    folder: Examples | None = None
    catalog: dict = field(default_factory=dict)
    ds_config: dict | None = None
    hpz_check: HpzIntegrityCallback | None = None
    pack: bool = False
    args: TrainingArguments | None = None  # trl's SFTConfig or DPOConfig
    path: Path | None = None
    model: PreTrainedModel | None = None
    tok: PreTrainedTokenizerBase | None = None
    train_rows: list = field(default_factory=list)
    val_rows: list = field(default_factory=list)
    val_source: str = "none"
    trainer: Trainer | None = None
    mix: dict = field(default_factory=dict)
    frozen: FrozenLayerCache | None = None
    answer_layer: AnswerOnlyTopLayer | None = None
    cache_mb: float = 0.0
    validation: ValidationCallback | None = None
    log_entries: list = field(default_factory=list)

    def say(self, text: str) -> None:
        if self.progress:
            self.echo(text)


def train(cfg: TrainConfig, *, progress: bool = True, echo=print) -> TrainResult:
    """Fine-tune ``cfg.model`` on the T1 task mixture of ``cfg.examples``; returns where the result is."""
    started = time.time()
    run = _open(cfg, progress, echo)
    _check_resume(run)
    _distributed(run)
    run.path, run.model, run.tok = _load(cfg, run.cuda, run.pack, run.out)
    _select(run)
    if cfg.objective == "sft":
        _sft_trainer(run)
    else:
        _dpo_trainer(run)
    _callbacks(run)
    resume = _prepare_out(run)
    _announce(run, resume)
    result = _fit(run, resume)
    return _finish(run, result, started)


def _open(cfg: TrainConfig, progress: bool, echo) -> _Run:
    """The run's folders, device and the examples with the task specs they were built with."""
    run = _Run(cfg, progress, echo, Path(cfg.out), Path(cfg.examples), _cuda())
    run.folder = Examples.open(run.examples)
    # The answer words of every task come from the specs the examples were built with (checked against tasks_dir).
    run.catalog = run.folder.catalog(cfg.tasks_dir)
    run.pack = cfg.pack and cfg.objective == "sft"
    return run


def _check_resume(run: _Run) -> None:
    """Refuse to resume checkpoints of a run whose resume-sensitive settings differ (TrainConfig.RESUME_FIELDS)."""
    previous = run.out / "config.json"
    if not (previous.is_file() and run.cfg.resume):
        return
    old, now = json.loads(previous.read_text()), run.cfg.model_dump()
    changed = [k for k in TrainConfig.RESUME_FIELDS if old.get(k) != now.get(k)]
    if changed and latest_checkpoint(run.out):
        raise UserError(f"{run.out}: holds checkpoints of a run with other {', '.join(changed)}; "
                        "use another --out or resume=false")


def _distributed(run: _Run) -> None:
    """DeepSpeed config and hpZ check when asked for, the training arguments, and the process group."""
    cfg = run.cfg
    if cfg.deepspeed:
        from recbrew.train.zero import (  # lazy: loads transformers
            CHECK_KEY,
            HpzIntegrityCallback,
            load_deepspeed_config,
        )

        world = int(os.environ.get("WORLD_SIZE", "1"))
        run.ds_config = load_deepspeed_config(cfg.deepspeed, world_size=world, overrides=cfg.deepspeed_overrides)
        # recbrew's own block: DeepSpeed does not know it. The command-line setting wins over the config's.
        block = run.ds_config.pop(CHECK_KEY, None)
        if cfg.hpz_check_every:
            run.hpz_check = HpzIntegrityCallback(every_n_steps=cfg.hpz_check_every, on_mismatch=cfg.hpz_check_action)
        elif block is not None:
            run.hpz_check = HpzIntegrityCallback.from_deepspeed_config({CHECK_KEY: block})
    run.args = _training_args(cfg, run.out, run.progress, run.cuda, run.ds_config)  # before loading: ZeRO-3
    if run.ds_config:
        import deepspeed

        # Join the process group now, so zero.Init partitions the weights over every rank.
        deepspeed.init_distributed(dist_backend="nccl" if run.cuda else "gloo")
        _ = run.args.device


def _stage3(run: _Run) -> bool:
    return bool(run.ds_config and run.ds_config.get("zero_optimization", {}).get("stage") == 3)


def _select(run: _Run) -> None:
    """The training requests (weighted, capped, thinned) and the validation requests."""
    from recbrew.train.data import thin_negatives  # lazy: loads torch

    cfg = run.cfg
    rows = run.folder.requests("train")
    # ZeRO-3 partitions the weights: the in-training scorer cannot run on them.
    run.train_rows, run.val_rows, run.val_source = validation_requests(run.folder, cfg, rows, not _stage3(run),
                                                                       run.echo, run.progress)
    if cfg.negatives_per_positive is not None:
        run.train_rows = thin_negatives(run.train_rows, cfg.negatives_per_positive, cfg.seed)
    if not run.train_rows:
        raise UserError(f"{run.examples}: no training requests for the chosen tasks")


def _sft_trainer(run: _Run) -> None:
    """Units (packed slates), the frozen-layer cache and the answer-only top layer, and the SFT trainer."""
    import datasets

    from recbrew.train.data import UnitCollator, build_units, task_mix  # lazy: loads torch
    from recbrew.train.trainer import AnswerSFTTrainer  # lazy: loads trl

    cfg, tok = run.cfg, run.tok
    units = build_units(run.train_rows, tok, AnswerWords(tok, run.catalog), tok.eos_token_id,
                        pack=run.pack, candidates_per_sequence=cfg.candidates_per_sequence)
    run.mix = task_mix(units)
    if cfg.cache_frozen:
        units = _frozen_cache(run, units)
    if cfg.answer_only_top_layer and not run.ds_config:
        from recbrew.models.answer_layer import AnswerOnlyTopLayer, supports  # lazy: loads transformers
        from recbrew.train.frozen_cache import decoder_layers  # lazy: loads torch

        top = decoder_layers(run.model)[-1]
        if supports(top):
            run.answer_layer = AnswerOnlyTopLayer(top)
        else:
            run.say("train: answer_only_top_layer: this model's layers are not Llama-style; the top layer runs "
                    "at every position")
    run.trainer = AnswerSFTTrainer(model=run.model, args=run.args, train_dataset=datasets.Dataset.from_list(units),
                                   processing_class=tok, data_collator=UnitCollator(tok.pad_token_id, multi_item=run.pack),
                                   peft_config=_peft(run), frozen_cache=run.frozen, answer_layer=run.answer_layer,
                                   loss_over=cfg.answer_loss)


def _frozen_cache(run: _Run, units: list[dict]) -> list[dict]:
    """Cache the activations entering the adapted layers (epoch 1 computes them); units gain their index."""
    from recbrew.train.frozen_cache import FrozenLayerCache, decoder_layers  # lazy: loads torch

    layers = decoder_layers(run.model)
    if run.cfg.lora_layers >= len(layers):
        run.say(f"train: cache_frozen: all {len(layers)} layers are adapted (lora_layers={run.cfg.lora_layers}), "
                "so there is nothing to cache")
        return units
    run.frozen = FrozenLayerCache(layers, len(layers) - run.cfg.lora_layers, dtype=frozen_dtype(run.cfg, run.cuda))
    run.cache_mb = (sum(u["length"] for u in units) * run.model.config.hidden_size
                    * (run.frozen.dtype or run.model.dtype).itemsize / 2**20)
    return [{**u, "index": i} for i, u in enumerate(units)]


def _peft(run: _Run):
    return lora_config(run.cfg, run.model) if run.cfg.lora else None


def _dpo_trainer(run: _Run) -> None:
    import datasets

    from recbrew.train.trainer import AnswerDPOTrainer, AnswerPreferenceCollator  # lazy: loads trl

    pairs = _dpo_rows(run.train_rows, run.catalog, run.cfg.dpo_pairs_per_request, run.cfg.seed)
    if not pairs:
        raise UserError(f"{run.examples}: no request has both an engaged and a non-engaged candidate for DPO")
    run.mix = {"pairs": len(pairs)}
    run.trainer = AnswerDPOTrainer(model=run.model, args=run.args, train_dataset=datasets.Dataset.from_list(pairs),
                                   processing_class=run.tok, peft_config=_peft(run),
                                   data_collator=AnswerPreferenceCollator(pad_token_id=run.tok.pad_token_id))


def _callbacks(run: _Run) -> None:
    """The validation AUC (and best-step keeping) and the hpZ integrity check."""
    if run.val_rows:
        from recbrew.scoring.hf import HFScorer  # lazy: loads torch
        from recbrew.train.trainer import ValidationCallback  # lazy: loads trl

        def log(entry: dict) -> None:
            run.log_entries.append(entry)
            run.say(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))

        mode = "multi" if run.pack else "prefix"
        run.validation = ValidationCallback(
            lambda m: HFScorer(m, _ScoringTokenizer(run.tok), mode=mode, catalog=run.catalog), run.val_rows,
            run.cfg.eval_steps, log, at_start=run.cfg.eval_at_start, keep_best=run.cfg.select_best,
            best_dir=run.out / BEST_DIR)
        run.trainer.add_callback(run.validation)
    if run.hpz_check is not None:
        run.trainer.add_callback(run.hpz_check)


def _prepare_out(run: _Run) -> Path | None:
    """Write config.json; the checkpoint to resume from, if any (a fresh run forgets another run's best step)."""
    run.out.mkdir(parents=True, exist_ok=True)
    if run.trainer.is_world_process_zero():
        (run.out / "config.json").write_text(json.dumps(run.cfg.model_dump(), indent=2))
    resume = latest_checkpoint(run.out) if run.cfg.resume else None
    if run.validation is not None:
        if resume:
            run.validation.resume(int(resume.name.split("-")[-1]))
        elif run.trainer.is_world_process_zero():
            shutil.rmtree(run.out / BEST_DIR, ignore_errors=True)
    return resume


def _announce(run: _Run, resume: Path | None) -> None:
    cfg = run.cfg
    run.say(f"train: {cfg.objective} on {len(run.train_rows):,} requests ({sum(run.mix.values()):,} labelled items"
            f"{', packed' if run.pack else ''}) from {run.examples}; model {cfg.model}"
            f"{' + LoRA' if cfg.lora else ' (full)'}; {'CUDA' if run.cuda else 'CPU'}"
            f"{'; resuming from ' + str(resume) if resume else ''}")
    if run.frozen is not None:
        frozen = run.frozen
        run.say(f"train: caching the activations entering layer {frozen.first} of {len(frozen.layers)} "
                f"(~{run.cache_mb:,.0f} MB); epochs after the first run the top {cfg.lora_layers} layers only; "
                f"frozen layers in {describe(frozen.dtype or run.model.dtype)}, adapted layers in "
                f"{describe(run.model.dtype)}")


def _fit(run: _Run, resume: Path | None):
    """Train with the cache and the answer-only layer installed; final weights = the best validation step."""
    parts = [p for p in (run.frozen, run.answer_layer) if p is not None]
    for part in parts:
        part.install()
    try:
        result = run.trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        for part in parts:
            part.uninstall()
    val, last_step = run.validation, run.trainer.state.global_step
    best = val.best if val is not None and run.cfg.select_best else None
    if best and best["step"] != last_step:
        val.restore_best(run.trainer.model)
        last_auc = next((h["val_macro_auc"] for h in val.history if h["step"] == last_step), float("nan"))
        run.say(f"train: final/ holds step {best['step']}, the best validation macro AUC "
                f"({best['val_macro_auc']:.4f}; the last step, {last_step}, had {last_auc:.4f})")
    return result


def _meta(run: _Run, result) -> dict:
    """What final/recbrew_train.json records about the run."""
    cfg, trainer, val = run.cfg, run.trainer, run.validation
    last_step = trainer.state.global_step
    best = val.best if val is not None and cfg.select_best else None
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    val_hist = val.history if val is not None else []
    trained = sorted({r["task"] for r in run.train_rows})
    meta = {
        "objective": cfg.objective, "base_model": str(run.path), "model_arg": cfg.model, "lora": cfg.lora,
        "data_seed": run.folder.manifest.get("config", {}).get("seed"), "train_seed": cfg.seed,
        "examples": str(run.examples.resolve()),
        "task_versions": {t: run.catalog[t].version for t in trained},
        "task_specs": {t: spec_record(run.catalog[t]) for t in trained},
        "config": cfg.model_dump(), "mix": run.mix, "steps": last_step,
        "final_loss": losses[-1] if losses else float(result.training_loss),
        "train_requests": len(run.train_rows), "val": val_hist, "val_source": run.val_source,
        "val_requests": len(run.val_rows),
        # The step final/ holds: the best validation macro AUC (select_best), else the last step.
        "final_step": best["step"] if best else last_step, "selected_by": "val_macro_auc" if best else "last_step",
        "final_val_macro_auc": best["val_macro_auc"] if best else (val_hist[-1]["val_macro_auc"] if val_hist else None),
    }
    if run.frozen is not None:
        meta["frozen_cache"] = run.frozen.summary()
    if run.hpz_check is not None:
        reports = run.hpz_check.reports
        meta["hpz_integrity"] = {"checks": len(reports), "checked_params": sum(r.checked_params for r in reports),
                                 "mismatches": sum(r.slice_mismatches + r.full_mismatches for r in reports)}
        run.say("hpZ integrity: {checks} checks, {checked_params} parameters compared, {mismatches} mismatches"
                .format(**meta["hpz_integrity"]))
    return meta


def _finish(run: _Run, result, started: float) -> TrainResult:
    """Write final/ aside and rename it into place (an interrupted run never leaves a half-written one)."""
    trainer, out = run.trainer, run.out
    staging, final = out / ".final.tmp", out / "final"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # every rank: ZeRO-3 gathers the partitioned weights
    meta = _meta(run, result)
    seconds = time.time() - started
    log_doc = {**meta, "seconds": seconds, "log_history": trainer.state.log_history, "entries": run.log_entries}
    if trainer.is_world_process_zero():
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))
        run.tok.save_pretrained(str(staging))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        (out / LOG_FILE).write_text(json.dumps(log_doc, indent=2, default=str))
    run.trainer = None
    del trainer
    if run.cuda:
        import torch

        torch.cuda.empty_cache()
    return TrainResult(out, final, meta["final_loss"], meta["final_val_macro_auc"], meta["steps"], seconds, log_doc,
                       meta["final_step"])


class _ScoringTokenizer:
    """The call shape `HFScorer` uses, on a transformers tokenizer."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, text, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self.tok(text, add_special_tokens=add_special_tokens)["input_ids"]}
