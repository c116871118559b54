"""`TrainConfig`: one fine-tuning run, read from `configs/train/*.yaml` with command-line overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recbrew import config


class TrainConfig(BaseModel):
    """Everything a run needs; every field can be overridden as ``key=value`` on the command line."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    #: Settings a checkpoint depends on: resuming a run whose value of any of these changed is refused.
    RESUME_FIELDS: ClassVar[tuple[str, ...]] = (
        "model", "examples", "objective", "answer_loss", "lora", "layers", "lora_layers", "pack", "seed", "tasks",
        "kinds", "task_weights", "max_examples", "negatives_per_positive", "batch_size", "grad_accum")

    model: str = Field("smollm2", description="Model to fine-tune: `smollm2`, a recbrew-tiny folder or any HF folder.")
    examples: str = Field("runs/quickstart/examples", description="Examples folder written by `recbrew data build`.")
    tasks_dir: str | None = Field(None, description=(
        "A task folder to check the examples against: the answer words come from the task specs recorded in the "
        "examples; a task this folder defines differently is an error (null: the recorded specs, no check)."))
    out: str = Field("runs/train", description="Output folder: checkpoints, `final/`, `train_log.json`.")
    objective: Literal["sft", "dpo"] = Field("sft", description="`sft` (answer-token loss) or `dpo` (preference pairs).")
    answer_loss: Literal["vocab", "choices"] = Field("vocab", description=(
        "SFT loss of an answer word: cross-entropy over the full vocabulary, or over its choices only (yes/no, "
        "the slot letters: what the scorer normalizes over); generative targets always use the vocabulary."))
    tasks: list[str] | None = Field(None, description="T1 tasks to train on (default: every T1 task of the examples).")
    task_weights: dict[str, float] = Field(default_factory=dict,
                                           description="Sampling weight per task (default 1.0): 2.0 doubles its share.")
    kinds: list[Literal["binary", "listwise", "generative"]] | None = Field(
        None, description="Task kinds to train on (default: all); e.g. [binary] for pointwise ranking only.")
    max_examples: int | None = Field(None, ge=1, description="Cap on training requests after weighting (seeded).")
    negatives_per_positive: float | None = Field(None, gt=0, description=(
        "Thin binary negatives to about this many per positive, per task (seeded; null: keep all). More positives "
        "per step helps ranking; P(yes) then over-states engagement, so calibration metrics move."))
    seed: int = Field(0, description="Seed of data sampling, LoRA init and dropout.")
    layers: int | None = Field(None, ge=1, description=(
        "Keep only the first N decoder layers of the model (null: all). The run writes the truncated base model "
        "to `out/base-LN/` (a plain HF folder), so the adapter, the export, HFScorer and vLLM load it unchanged."))

    # Adapter or full fine-tuning.
    lora: bool = Field(True, description="Train a LoRA adapter (false: full fine-tuning).")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                      description="Module names LoRA adapts.")
    lora_layers: int | None = Field(None, ge=1, description=(
        "Adapt only the top N transformer layers (null: all). The backward pass stops at the lowest adapted "
        "layer, so a step costs much less on CPU."))
    cache_frozen: bool = Field(False, description=(
        "With lora_layers: keep the activations entering the lowest adapted layer from the first epoch and reuse "
        "them in later epochs, so those cost about lora_layers / layers of a pass (memory: tokens x hidden x 4 "
        "bytes, printed at the start). SFT only."))

    answer_only_top_layer: bool = Field(True, description=(
        "Run the top decoder layer at the answer positions only (keys and values everywhere): the loss reads "
        "nothing else, so loss and gradients are unchanged and the top layer costs about one position per "
        "candidate. SFT, Llama-style layers, no DeepSpeed (ignored otherwise)."))

    # Multi-item packing: one sequence = a request's prefix + up to `candidates_per_sequence` segments.
    pack: bool = Field(True, description="Pack a request's candidates into one sequence (history encoded once).")
    candidates_per_sequence: int = Field(8, ge=1)

    # Optimisation.
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    lr_scheduler: str = Field("cosine", description="Any `transformers` scheduler name.")
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run `epochs`).")
    batch_size: int = Field(4, ge=1, description="Sequences per device per step.")
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    bf16: bool | None = Field(None, description=(
        "bf16 compute. Default (null): on where the hardware has bf16 arithmetic. On CUDA: mixed-precision "
        "training. On CPU (AVX-512 BF16 / AMX): the frozen layers below `lora_layers` run and are cached in bf16 "
        "while the adapted layers train in fp32. false: fp32 everywhere."))

    # DPO.
    dpo_beta: float = Field(0.1, gt=0)
    dpo_pairs_per_request: int = Field(4, ge=1)

    # Progress, validation, checkpoints.
    logging_steps: int = Field(5, ge=1)
    eval_steps: int = Field(0, ge=0, description="Validation AUC every N steps (0: only at the end).")
    eval_requests: int | None = Field(None, ge=0, description=(
        "Validation requests scored for the validation AUC. With a validation split in the examples (`recbrew data "
        "build --val-days/--val-fraction`): at most this many of it, sampled (null: all of it). Without one: null "
        "means no validation, N > 0 holds N binary training requests out of training (printed; at most a fifth of the "
        "training requests, so some are always left to train on). 0: none."))
    select_best: bool = Field(True, description=(
        "final/ holds the evaluated step with the best validation macro AUC (ties: the earlier step), not the last "
        "one; the step is recorded in recbrew_train.json. The trainable weights of the best step are kept in memory "
        "and in `out/best-val/` (for full fine-tuning: the whole model). false: final/ is the last step."))
    eval_at_start: bool = Field(False, description="Also score the held-out requests before the first step "
                                "(the untrained model's AUC, for comparison).")
    save_steps: int = Field(50, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    resume: bool = Field(True, description="Resume from the newest checkpoint in `out` when there is one.")

    # Kernels and distribution.
    liger: bool = Field(True, description="Apply liger-kernel patches when CUDA is present.")
    deepspeed: str | None = Field(None, description="DeepSpeed config: a path or a shipped name (zero2, zero3, zeropp).")
    deepspeed_overrides: dict[str, Any] = Field(default_factory=dict, description=(
        "Dotted DeepSpeed keys to set, e.g. {zero_optimization.zero_hpz_partition_size: 2}."))
    hpz_check_every: int = Field(0, ge=0, description="hpZ integrity check every N steps (0: off).")
    hpz_check_action: Literal["fail", "warn"] = "fail"

    @model_validator(mode="after")
    def _combinations(self):
        if self.lora_layers is not None and not self.lora:
            raise ValueError("lora_layers applies to LoRA only (lora=false trains every weight)")
        if self.cache_frozen:
            if self.lora_layers is None:
                raise ValueError("cache_frozen needs lora_layers (only layers below the adapted ones can be cached)")
            if self.objective != "sft":
                raise ValueError("cache_frozen applies to objective=sft only")
            if self.deepspeed:
                raise ValueError("cache_frozen does not combine with deepspeed (partitioned layers are not cached)")
        return self

    @field_validator("target_modules", "tasks", "kinds", mode="before")
    @classmethod
    def _comma_list(cls, value):
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A config from a YAML file (a path, or a shipped name like `tiny`) plus ``key=value`` overrides."""
    return config.load(TrainConfig, "train", path, overrides, dotted=False)


def resolve_config(name: str | Path) -> Path:
    """A config path, or the shipped `configs/train/NAME.yaml`."""
    return config.resolve("train", name)
