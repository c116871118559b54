"""DeepSpeed ZeRO / ZeRO++ configs, the hpZ version guard and the hpZ integrity check.

hpZ (``zero_hpz_partition_size`` > 1) keeps a second copy of every ZeRO-3 shard, partitioned
inside a small group of ranks (``ds_secondary_tensor``), so forward/backward all-gathers stay
inside that group. If a secondary copy falls out of step with the primary shard (``ds_tensor``)
the model silently trains on wrong weights. :func:`check_hpz_integrity` re-gathers the secondary
copies and compares them with the primary shards; :class:`HpzIntegrityCallback` runs it from a
`transformers` Trainer every N steps.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import TrainerCallback

from recbrew import config
from recbrew.errors import ConfigError, RecbrewError

log = logging.getLogger(__name__)

#: First DeepSpeed release with every upstream hpZ fix recbrew relies on.
HPZ_MIN_DEEPSPEED = "0.19.5"
HPZ_FIXES = (
    "0.13.5 (PR #5216: race between secondary partitioning and the secondary all-gather), "
    "0.18.3 (PR #7707: stale secondary copies after GatheredParameters(modifier_rank=0) or a "
    "checkpoint load - the path from_pretrained takes under zero.Init), "
    "0.19.5 (PR #8210: parameters smaller than the hpZ group)"
)
#: Top-level key of recbrew's own settings inside a DeepSpeed config; DeepSpeed ignores it.
CHECK_KEY = "hpz_integrity_check"
SUFFIXES = (".json", ".yaml", ".yml")


class HpzIntegrityError(RecbrewError):
    """hpZ secondary copies disagree with the primary ZeRO-3 shards: the run computes on wrong weights."""


class HpzCheckSettings(BaseModel):
    """How often and how the hpZ integrity check runs (the ``hpz_integrity_check`` block)."""

    model_config = ConfigDict(extra="forbid")

    every_n_steps: int = Field(100, ge=1, description="Check on optimizer steps 0, N, 2N, ...")
    on_mismatch: Literal["fail", "warn"] = Field("fail", description="Raise HpzIntegrityError, or warn and go on.")
    mode: Literal["full", "slice"] = Field(
        "full", description="`full`: every gathered element against the primary shards (one extra data-parallel "
        "all-gather per parameter); `slice`: each rank's own slice only (hpZ-group traffic only, can miss faults).")


class _ZeroSection(BaseModel):
    """The fields of ``zero_optimization`` recbrew checks; DeepSpeed validates the rest."""

    model_config = ConfigDict(extra="allow")

    stage: int = Field(0, ge=0, le=3)
    zero_hpz_partition_size: int = Field(1, ge=1)
    zero_quantized_weights: bool = False
    zero_quantized_nontrainable_weights: bool = False
    zero_quantized_gradients: bool = False


# -- configs ---------------------------------------------------------------------------------------


def shipped_configs() -> list[str]:
    """Names of the shipped DeepSpeed configs (``zero2``, ``zero3``, ``zeropp``)."""
    return config.shipped_names("deepspeed", SUFFIXES)


def apply_overrides(ds_config: dict, overrides: Mapping[str, Any]) -> dict:
    """A copy of ``ds_config`` with dotted keys set (``{"zero_optimization.zero_hpz_partition_size": 4}``)."""
    return config.set_dotted(ds_config, overrides, "DeepSpeed override")


def unresolved_auto(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys still set to ``"auto"`` (the HF integration fills them; anything else must not see them)."""
    keys = []
    for key, value in config.items():
        if isinstance(value, Mapping):
            keys += unresolved_auto(value, f"{prefix}{key}.")
        elif value == "auto":
            keys.append(f"{prefix}{key}")
    return keys


def require_hpz_fixes(deepspeed_version: str) -> None:
    """Refuse hpZ on a DeepSpeed release that lacks the upstream hpZ fixes (< 0.19.5)."""
    try:
        version = Version(deepspeed_version)
    except InvalidVersion:
        raise ConfigError(f"cannot read DeepSpeed version {deepspeed_version!r}; hpZ needs >= {HPZ_MIN_DEEPSPEED}") \
            from None
    if version < Version(HPZ_MIN_DEEPSPEED):
        raise ConfigError(
            f"zero_hpz_partition_size > 1 needs DeepSpeed >= {HPZ_MIN_DEEPSPEED}, found {deepspeed_version}: "
            f"older releases lack the hpZ fixes of {HPZ_FIXES}; upgrade DeepSpeed or set zero_hpz_partition_size "
            "to 1")


def _installed_deepspeed() -> str:
    try:
        return metadata.version("deepspeed")
    except metadata.PackageNotFoundError:
        raise ConfigError("DeepSpeed is not installed; install recbrew's dependencies (deepspeed>="
                          f"{HPZ_MIN_DEEPSPEED})") from None


def ds_accelerator() -> str:
    """The accelerator DeepSpeed will pick: ``$DS_ACCELERATOR``, else ``cuda`` when torch sees a GPU, else ``cpu``."""
    return os.environ.get("DS_ACCELERATOR") or ("cuda" if torch.cuda.is_available() else "cpu")


def load_deepspeed_config(path_or_name: str | Path, *, world_size: int | None = None,
                          overrides: Mapping[str, Any] | None = None,
                          deepspeed_version: str | None = None, accelerator: str | None = None) -> dict:
    """Read and validate a DeepSpeed config: a path, or a shipped name (``zero2``, ``zero3``, ``zeropp``).

    ``overrides`` sets dotted keys; ``world_size`` (when known) is checked against the hpZ group size;
    ``deepspeed_version`` and ``accelerator`` default to the installed DeepSpeed and
    :func:`ds_accelerator`. Raises :class:`ConfigError` with one line.
    """
    path = config.resolve("deepspeed", path_or_name, SUFFIXES)
    ds = apply_overrides(config.read_mapping(path, "DeepSpeed config"), overrides or {})
    zero_raw = ds.get("zero_optimization", {})
    if not isinstance(zero_raw, dict):
        raise ConfigError(f"{path}: zero_optimization must be an object")
    try:
        zero = _ZeroSection.model_validate(zero_raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: zero_optimization.{loc}: {err['msg']}") from None
    if CHECK_KEY in ds:
        hpz_check_settings(ds, source=str(path))
    hpz = zero.zero_hpz_partition_size
    zeropp = {"zero_hpz_partition_size": hpz > 1, "zero_quantized_weights": zero.zero_quantized_weights,
              "zero_quantized_nontrainable_weights": zero.zero_quantized_nontrainable_weights,
              "zero_quantized_gradients": zero.zero_quantized_gradients}
    for name, used in zeropp.items():
        if used and zero.stage != 3:
            raise ConfigError(f"{path}: zero_optimization.{name} is a ZeRO++ option and needs stage 3, "
                              f"not stage {zero.stage}")
    quantized = [name for name, used in zeropp.items() if used and name != "zero_hpz_partition_size"]
    if quantized and (accelerator or ds_accelerator()) == "cpu":
        raise ConfigError(f"{path}: zero_optimization.{quantized[0]} needs DeepSpeed's CUDA quantizer kernels; on "
                          f"CPU set {' and '.join(quantized)} to false (hpZ alone works) or use zero3")
    if hpz > 1:
        if world_size is not None and (world_size < hpz or world_size % hpz):
            raise ConfigError(f"{path}: zero_optimization.zero_hpz_partition_size={hpz} does not divide the world "
                              f"size {world_size}; set it to the ranks per node, a divisor of {world_size} (override "
                              "zero_optimization.zero_hpz_partition_size=N)")
        require_hpz_fixes(deepspeed_version or _installed_deepspeed())
    return ds


def hpz_check_settings(config: Mapping[str, Any], *, source: str = "DeepSpeed config") -> HpzCheckSettings:
    """The ``hpz_integrity_check`` block of a DeepSpeed config (defaults when absent)."""
    try:
        return HpzCheckSettings.model_validate(config.get(CHECK_KEY) or {})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{source}: {CHECK_KEY}.{loc}: {err['msg']}") from None


# -- the integrity check ---------------------------------------------------------------------------


@dataclass
class IntegrityReport:
    """Result of one hpZ integrity check; counts are summed over every rank of the data-parallel group."""

    applicable: bool  # False: no ZeRO-3 parameters or hpZ off
    mode: str = "full"
    step: int | None = None
    checked_params: int = 0  # parameters whose secondary copy exists on every rank
    skipped_params: int = 0  # quantized secondary copies, NVMe-offloaded shards
    inconsistent_params: int = 0  # secondary copy present on some ranks only
    slice_mismatches: int = 0  # elements of a rank's own slice of the hpZ-gathered tensor != its primary shard
    full_mismatches: int | None = None  # elements of the hpZ-gathered tensor != the primary shards (mode "full")
    mismatched_params: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.slice_mismatches or self.full_mismatches or self.inconsistent_params)

    def summary(self) -> str:
        where = f"step {self.step}: " if self.step is not None else ""
        if not self.applicable:
            return f"{where}hpZ integrity check not applicable (no ZeRO-3 hpZ parameters)"
        head = ", ".join(self.mismatched_params[:5]) + (" ..." if len(self.mismatched_params) > 5 else "")
        return (f"{where}hpZ integrity {'ok' if self.ok else 'MISMATCH'}: {self.checked_params} parameters checked, "
                f"{self.slice_mismatches} slice / {self.full_mismatches} full mismatched elements, "
                f"{self.inconsistent_params} inconsistent" + (f" ({head})" if head else ""))

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def _unwrap(model: Any) -> Any:
    # A DeepSpeedEngine (or any wrapper) holds the real module in `.module`.
    while hasattr(model, "module") and hasattr(model.module, "named_parameters"):
        model = model.module
    return model


def _zero_params(model: Any) -> list[tuple[str, Any]]:
    named = [(n, p) for n, p in _unwrap(model).named_parameters() if hasattr(p, "ds_id")]
    return sorted(named, key=lambda item: item[1].ds_id)  # same order on every rank


def _hpz_group(params: list[tuple[str, Any]]) -> Any:
    for _, p in params:
        group = getattr(p, "ds_zero_param_process_group", None)
        if group is not None:
            return group
    return None


def _differing(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of elements whose bytes differ (bit-exact, NaN-safe, any dtype)."""
    if a.numel() == 0:
        return 0
    size = a.element_size()
    a_bytes = a.contiguous().view(-1).view(torch.uint8).view(-1, size)
    b_bytes = b.contiguous().view(-1).view(torch.uint8).view(-1, size)
    return int((a_bytes != b_bytes).any(dim=1).sum())


def check_hpz_integrity(model: Any, group: Any = None, *, mode: Literal["full", "slice"] = "full",
                        step: int | None = None) -> IntegrityReport:
    """Re-gather every hpZ secondary copy inside its hpZ group and compare it with the primary shards.

    Every rank checks that its slice of the gathered tensor equals its own ``ds_tensor``; in ``full``
    mode every rank also compares the whole gathered tensor with the primary shards gathered over the
    data-parallel group (a fault in a secondary copy that no rank of the group owns as primary shows only
    there). Counts are all-reduced, so every rank gets the same report. A collective: call on all ranks.
    """
    params = _zero_params(model)
    group = group if group is not None else _hpz_group(params)
    if not params or group is None or not dist.is_available() or not dist.is_initialized():
        return IntegrityReport(applicable=False, mode=mode, step=step)
    from deepspeed.accelerator import get_accelerator
    from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum

    accel = get_accelerator()
    device = torch.device(accel.current_device_name())
    accel.synchronize()  # secondary copies may still be written on the current stream
    dp_group = params[0][1].ds_process_group
    world, rank = dist.get_world_size(dp_group), dist.get_rank(dp_group)
    k = dist.get_world_size(group)

    # Which parameters have a comparable secondary copy on this rank (1), a quantized/offloaded one (skip).
    usable, skipped = [], []
    for _, p in params:
        sec = getattr(p, "ds_secondary_tensor", None)
        off = getattr(p.ds_tensor, "final_location", None) == OffloadDeviceEnum.nvme
        quantized = sec is not None and (hasattr(sec, "ds_quant_scale") or hasattr(p.ds_tensor, "ds_quant_scale"))
        usable.append(int(sec is not None and not quantized and not off))
        skipped.append(int(sec is not None and (quantized or off)))
    flags = torch.tensor(usable + skipped, dtype=torch.int64, device=device)
    dist.all_reduce(flags, group=dp_group)
    present, skip = flags[: len(params)].tolist(), flags[len(params):].tolist()

    counts = torch.zeros(len(params), 2, dtype=torch.int64)
    inconsistent = {i for i in range(len(params)) if 0 < present[i] < world}
    checked = 0
    for i, (_, p) in enumerate(params):
        if present[i] < world:
            continue
        checked += 1
        sec = p.ds_secondary_tensor.detach().to(device).contiguous()
        gathered = torch.empty(sec.numel() * k, dtype=sec.dtype, device=device)
        dist.all_gather(list(gathered.chunk(k)), sec, group=group)
        primary = p.ds_tensor.detach().to(device).contiguous().view(-1)
        shard = primary.numel()
        # ds_numel excludes the padding, which holds no meaning in either copy.
        valid = max(0, min(p.ds_numel - rank * shard, shard))
        counts[i, 0] += _differing(gathered[rank * shard: rank * shard + valid], primary[:valid])
        if mode == "full":
            primaries = torch.empty(shard * world, dtype=primary.dtype, device=device)
            dist.all_gather(list(primaries.chunk(world)), primary, group=dp_group)
            counts[i, 1] += _differing(gathered[: p.ds_numel], primaries[: p.ds_numel])
    total = counts.to(device)
    dist.all_reduce(total, group=dp_group)
    total = total.cpu()
    bad = [name for i, ((name, _), row) in enumerate(zip(params, total.tolist(), strict=True))
           if any(row) or i in inconsistent]
    return IntegrityReport(
        applicable=True, mode=mode, step=step, checked_params=checked,
        skipped_params=sum(1 for s in skip if s), inconsistent_params=len(inconsistent),
        slice_mismatches=int(total[:, 0].sum()),
        full_mismatches=int(total[:, 1].sum()) if mode == "full" else None,
        mismatched_params=bad,
    )


class HpzIntegrityCallback(TrainerCallback):
    """Runs :func:`check_hpz_integrity` every N optimizer steps of a Trainer; no-op without ZeRO-3 hpZ.

    The check runs after each forward pass of a sampled step, before its backward pass and optimizer step
    (inside HF's DeepSpeed backward): DeepSpeed drops the hpZ copies of trainable weights after every step
    and rebuilds them as layers are released, so they exist only within a step; with gradient accumulation,
    copies rebuilt in one micro-batch's backward are read by the next micro-batch's forward.
    """

    def __init__(self, every_n_steps: int = 100, on_mismatch: Literal["fail", "warn"] = "fail",
                 mode: Literal["full", "slice"] = "full", group: Any = None):
        settings = HpzCheckSettings(every_n_steps=every_n_steps, on_mismatch=on_mismatch, mode=mode)
        self.every_n_steps, self.on_mismatch, self.mode = settings.every_n_steps, settings.on_mismatch, settings.mode
        self.group = group
        self.reports: list[IntegrityReport] = []
        self._model = None
        self._hook = None
        self._armed_step: int | None = None

    @classmethod
    def from_deepspeed_config(cls, config: Mapping[str, Any]) -> HpzIntegrityCallback:
        """Settings from the config's ``hpz_integrity_check`` block (defaults when absent)."""
        return cls(**hpz_check_settings(config).model_dump())

    def install(self, model: Any) -> bool:
        """Hook the check onto ``model`` (a module or DeepSpeed engine); False when hpZ is off."""
        if self._hook is not None:
            return True
        params = _zero_params(model)
        if not params or (self.group is None and _hpz_group(params) is None):
            return False
        self._model = _unwrap(model)
        self._hook = self._model.register_forward_hook(self._after_forward)
        return True

    def remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._model, self._armed_step = None, None, None

    def _after_forward(self, module, args, output) -> None:
        if self._armed_step is None or not module.training:
            return
        report = check_hpz_integrity(module, self.group, mode=self.mode, step=self._armed_step)
        self.reports.append(report)
        self.handle(report)

    def handle(self, report: IntegrityReport) -> None:
        """Raise or warn on a mismatch, per ``on_mismatch``."""
        if report.ok:
            log.debug(report.summary())
            return
        if self.on_mismatch == "fail":
            raise HpzIntegrityError(report.summary())
        warnings.warn(report.summary(), RuntimeWarning, stacklevel=2)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.install(model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self._hook is None and model is not None:
            self.install(model)
        if self._hook is not None and state.global_step % self.every_n_steps == 0:
            self._armed_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        self._armed_step = None

    def on_train_end(self, args, state, control, **kwargs):
        self.remove()
