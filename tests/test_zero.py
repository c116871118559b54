"""DeepSpeed configs, the hpZ version guard and the hpZ integrity check (4 gloo ranks on CPU)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from recbrew.errors import ConfigError, UserError
from recbrew.train.zero import (
    HPZ_MIN_DEEPSPEED,
    HpzCheckSettings,
    HpzIntegrityCallback,
    HpzIntegrityError,
    IntegrityReport,
    _differing,
    apply_overrides,
    check_hpz_integrity,
    hpz_check_settings,
    load_deepspeed_config,
    require_hpz_fixes,
    shipped_configs,
    unresolved_auto,
)

torch.set_num_threads(1)
HPZ_OK = "0.19.8"


@pytest.fixture(autouse=True)
def _gpu_node(monkeypatch):
    """Configs are validated as on a CUDA node unless a test says otherwise (qwZ/qgZ need CUDA)."""
    monkeypatch.setattr("recbrew.train.zero.ds_accelerator", lambda: "cuda")


# -- version guard ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.13.4", "0.14.0", "0.18.2", "0.18.3", "0.19.4", "0.19.5.dev0", "0.19.5rc1"])
def test_hpz_refused_before_0_19_5(version):
    with pytest.raises(ConfigError) as e:
        require_hpz_fixes(version)
    msg = str(e.value)
    assert f"DeepSpeed >= {HPZ_MIN_DEEPSPEED}, found {version}" in msg
    for fix in ("0.13.5", "#5216", "0.18.3", "#7707", "GatheredParameters(modifier_rank=0)", "0.19.5", "#8210"):
        assert fix in msg


@pytest.mark.parametrize("version", ["0.19.5", "0.19.8", "0.19.5+cu121", "0.20.0", "1.0.0"])
def test_hpz_accepted_from_0_19_5(version):
    require_hpz_fixes(version)


def test_unreadable_version_refused():
    with pytest.raises(ConfigError, match="cannot read DeepSpeed version 'banana'"):
        require_hpz_fixes("banana")


def test_load_applies_the_guard_only_with_hpz():
    with pytest.raises(ConfigError, match="found 0.18.3"):
        load_deepspeed_config("zeropp", world_size=16, deepspeed_version="0.18.3")
    assert load_deepspeed_config("zero3", deepspeed_version="0.18.3")["zero_optimization"]["stage"] == 3
    off = load_deepspeed_config("zeropp", overrides={"zero_optimization.zero_hpz_partition_size": 1},
                                deepspeed_version="0.18.3")
    assert off["zero_optimization"]["zero_hpz_partition_size"] == 1
    assert load_deepspeed_config("zeropp", world_size=16, deepspeed_version="0.19.5")["zero_optimization"][
        "zero_hpz_partition_size"] == 8


# -- configs ---------------------------------------------------------------------------------------


def test_shipped_configs():
    assert shipped_configs() == ["zero2", "zero3", "zeropp"]
    z2, z3, zpp = (load_deepspeed_config(n, world_size=8, deepspeed_version=HPZ_OK) for n in shipped_configs())
    assert z2["zero_optimization"]["stage"] == 2 and z3["zero_optimization"]["stage"] == 3
    zero = zpp["zero_optimization"]
    assert (zero["stage"], zero["zero_hpz_partition_size"]) == (3, 8)
    assert zero["zero_quantized_weights"] is True and zero["zero_quantized_gradients"] is True
    # What the HF integration fills from TrainingArguments and the model.
    for cfg in (z2, z3, zpp):
        assert {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping", "bf16.enabled", "fp16.enabled"} <= set(unresolved_auto(cfg))
    assert hpz_check_settings(zpp) == HpzCheckSettings(every_n_steps=100, on_mismatch="fail", mode="full")
    assert hpz_check_settings(z3) == HpzCheckSettings()


def test_path_and_yaml_configs(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("zero_optimization:\n  stage: 3\n  zero_hpz_partition_size: 2\n")
    cfg = load_deepspeed_config(path, world_size=4, deepspeed_version=HPZ_OK)
    assert cfg == {"zero_optimization": {"stage": 3, "zero_hpz_partition_size": 2}}
    assert load_deepspeed_config(str(path), world_size=4, deepspeed_version=HPZ_OK) == cfg


@pytest.mark.parametrize("text, match", [
    ('{"zero_optimization": {"stage": 3,}}', r"bad\.json: invalid JSON at line 1 column 35: Expecting property name"),
    ('[1, 2]', "is a mapping of fields, got list"),
    ('{"zero_optimization": 3}', "zero_optimization must be an object"),
    ('{"zero_optimization": {"stage": 5}}', r"zero_optimization\.stage: Input should be less than or equal to 3"),
    ('{"zero_optimization": {"stage": 3, "zero_hpz_partition_size": 0}}',
     r"zero_optimization\.zero_hpz_partition_size: Input should be greater than or equal to 1"),
    ('{"zero_optimization": {"stage": 2, "zero_hpz_partition_size": 2}}',
     "zero_hpz_partition_size is a ZeRO\\+\\+ option and needs stage 3, not stage 2"),
    ('{"zero_optimization": {"stage": 2, "zero_quantized_gradients": true}}',
     "zero_quantized_gradients is a ZeRO\\+\\+ option and needs stage 3"),
    ('{"zero_optimization": {"stage": 3, "zero_hpz_partition_size": 3}}',
     "zero_hpz_partition_size=3 does not divide the world size 4"),
    ('{"zero_optimization": {"stage": 3, "zero_hpz_partition_size": 8}}',
     "zero_hpz_partition_size=8 does not divide the world size 4"),
    ('{"hpz_integrity_check": {"on_mismatch": "ignore"}}', r"hpz_integrity_check\.on_mismatch: Input should be"),
    ('{"hpz_integrity_check": {"every_n_steps": 0}}', r"hpz_integrity_check\.every_n_steps"),
    ('{"hpz_integrity_check": {"every": 5}}', r"hpz_integrity_check\.every: Extra inputs are not permitted"),
])
def test_config_errors_are_one_line(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_deepspeed_config(path, world_size=4, deepspeed_version=HPZ_OK)
    assert "\n" not in str(e.value)


def test_quantized_zeropp_refused_on_cpu(monkeypatch):
    monkeypatch.setattr("recbrew.train.zero.ds_accelerator", lambda: "cpu")
    with pytest.raises(ConfigError, match="zero_quantized_weights needs DeepSpeed's CUDA quantizer kernels; on CPU "
                       "set zero_quantized_weights and zero_quantized_gradients to false"):
        load_deepspeed_config("zeropp", world_size=8, deepspeed_version=HPZ_OK)
    off = {"zero_optimization.zero_quantized_weights": False, "zero_optimization.zero_quantized_gradients": False}
    cfg = load_deepspeed_config("zeropp", world_size=8, deepspeed_version=HPZ_OK, overrides=off)
    assert cfg["zero_optimization"]["zero_hpz_partition_size"] == 8
    assert load_deepspeed_config("zeropp", world_size=8, deepspeed_version=HPZ_OK, accelerator="cuda")


def test_unknown_config_names_the_shipped_ones(tmp_path):
    for missing in ("zero4", str(tmp_path / "nope.json")):
        with pytest.raises(ConfigError, match="no such file and not a shipped config \\(shipped: zero2, zero3, zeropp"):
            load_deepspeed_config(missing)


def test_overrides():
    cfg = {"a": 1, "zero_optimization": {"stage": 2}}
    out = apply_overrides(cfg, {"zero_optimization.stage": 3, "x.y.z": "auto", "a": 2})
    assert out == {"a": 2, "zero_optimization": {"stage": 3}, "x": {"y": {"z": "auto"}}}
    assert cfg == {"a": 1, "zero_optimization": {"stage": 2}}  # input untouched
    assert unresolved_auto(out) == ["x.y.z"]
    with pytest.raises(ConfigError, match="'a' is not a section"):
        apply_overrides(cfg, {"a.b": 1})
    fixed = load_deepspeed_config("zeropp", world_size=4, deepspeed_version=HPZ_OK,
                                  overrides={"zero_optimization.zero_hpz_partition_size": 2})
    assert fixed["zero_optimization"]["zero_hpz_partition_size"] == 2


def test_hf_integration_fills_every_auto():
    """transformers resolves every "auto" of the shipped configs, and DeepSpeed accepts the result."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = TrainingArguments(output_dir="unused", per_device_train_batch_size=3, gradient_accumulation_steps=2,
                             max_grad_norm=0.5, bf16=False, use_cpu=True, report_to=[])
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=100))
    for name in shipped_configs():
        hf = HfTrainerDeepSpeedConfig(load_deepspeed_config(name, world_size=8, deepspeed_version=HPZ_OK))
        hf.trainer_config_process(args)
        hf.trainer_config_finalize(args, model, 10)
        assert unresolved_auto(hf.config) == [], name
        assert (hf.config["train_micro_batch_size_per_gpu"], hf.config["gradient_accumulation_steps"],
                hf.config["gradient_clipping"]) == (3, 2, 0.5)
        zero = DeepSpeedZeroConfig(**hf.config["zero_optimization"])
        assert zero.stage == (2 if name == "zero2" else 3)
        assert zero.zero_hpz_partition_size == (8 if name == "zeropp" else 1)


# -- integrity check pieces ------------------------------------------------------------------------


def test_differing_is_bit_exact():
    a = torch.tensor([1.0, float("nan"), 0.0, 2.0, 3.0])
    b = torch.tensor([1.0, float("nan"), -0.0, 2.0, 3.5])
    assert _differing(a, b) == 2  # -0.0 == 0.0 numerically, but not the same bits; NaN bits match
    assert _differing(a.to(torch.bfloat16), a.to(torch.bfloat16)) == 0
    assert _differing(a[:0], b[:0]) == 0


def _report(**kw) -> IntegrityReport:
    return IntegrityReport(applicable=True, step=3, checked_params=4, **kw)


def test_report_ok_and_summary():
    assert _report(full_mismatches=0).ok
    bad = _report(slice_mismatches=0, full_mismatches=7, mismatched_params=["embed.weight"])
    assert not bad.ok
    assert bad.summary() == ("step 3: hpZ integrity MISMATCH: 4 parameters checked, 0 slice / 7 full mismatched "
                             "elements, 0 inconsistent (embed.weight)")
    assert not _report(inconsistent_params=1).ok
    assert bad.to_dict()["ok"] is False


def test_callback_fails_or_warns():
    bad = _report(slice_mismatches=2, full_mismatches=8, mismatched_params=["up.weight"])
    with pytest.raises(HpzIntegrityError, match="step 3: hpZ integrity MISMATCH.*up.weight"):
        HpzIntegrityCallback(on_mismatch="fail").handle(bad)
    with pytest.warns(RuntimeWarning, match="MISMATCH"):
        HpzIntegrityCallback(on_mismatch="warn").handle(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HpzIntegrityCallback(on_mismatch="fail").handle(_report(full_mismatches=0))


def test_callback_settings():
    cb = HpzIntegrityCallback.from_deepspeed_config(load_deepspeed_config("zeropp", deepspeed_version=HPZ_OK))
    assert (cb.every_n_steps, cb.on_mismatch, cb.mode) == (100, "fail", "full")
    with pytest.raises(ValueError):
        HpzIntegrityCallback(on_mismatch="ignore")


def test_callback_is_a_noop_without_deepspeed():
    from types import SimpleNamespace

    model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 1))
    assert check_hpz_integrity(model) == IntegrityReport(applicable=False, mode="full")
    cb = HpzIntegrityCallback(every_n_steps=1)
    cb.on_train_begin(None, SimpleNamespace(global_step=0), None, model=model)
    cb.on_step_begin(None, SimpleNamespace(global_step=0), None, model=model)
    model(torch.ones(2, 3)).sum().backward()
    assert cb.reports == [] and not model[0]._forward_hooks


def test_selftest_arguments_are_checked():
    from recbrew.bench.zero_selftest import run_selftest

    with pytest.raises(UserError, match="unknown hpZ fault"):
        run_selftest(fault="flipped")
    with pytest.raises(UserError, match="must be >= 2 and divide the number of ranks 4"):
        run_selftest(nproc=4, hpz=3)
    with pytest.raises(UserError, match="one group"):
        run_selftest(nproc=2, hpz=2)


# -- 4 gloo ranks ----------------------------------------------------------------------------------

STEPS = 4


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    """One torchrun launch: hpZ off, then hpZ=2 with a stale copy, a zeroed copy, and no fault."""
    from recbrew.bench.zero_selftest import run_selftest

    out = tmp_path_factory.mktemp("hpz")
    result = run_selftest(nproc=4, hpz=2, steps=STEPS, fault=["stale", "zeroed", None], out_dir=out)
    assert json.loads((out / "results.json").read_text())["runs"] == result["runs"]
    runs = {r["label"]: r for r in result["runs"]}
    weights = {label: torch.load(out / r["weights_file"]) for label, r in runs.items()}
    return result, runs, weights


def _sizes() -> dict[str, tuple[int, int]]:
    """Per parameter: (elements, elements of the second hpZ half that the group's last rank holds)."""
    from recbrew.bench.zero_selftest import TinyRanker

    world, hpz = 4, 2
    out = {}
    for name, p in TinyRanker().named_parameters():
        aligned = math.ceil(p.numel() / world) * world
        half = aligned // hpz
        out[name] = (p.numel(), max(0, p.numel() - half))
    return out


@pytest.mark.slow
def test_hpz_is_bit_identical_to_hpz_off(selftest):
    result, runs, weights = selftest
    base, hpz = runs["hpz1"], runs["hpz2"]
    assert result["ok"] and result["world_size"] == 4
    assert hpz["losses"] == base["losses"] and hpz["rank_losses"] == base["rank_losses"]
    assert len(base["losses"]) == STEPS and base["losses"][-1] < base["losses"][0]
    assert hpz["weights_sha256"] == base["weights_sha256"]
    assert weights["hpz1"].keys() == weights["hpz2"].keys()
    assert all(torch.equal(weights["hpz1"][n], weights["hpz2"][n]) for n in weights["hpz1"])
    # Training moved the trainable weights, not the frozen ones.
    from recbrew.bench.zero_selftest import FROZEN, reference_weights

    ref = reference_weights(result["seed"])
    assert all(torch.equal(weights["hpz2"][n], ref[n]) == (n in FROZEN) for n in ref)
    # The hpZ path really ran; the hpZ-off run never used it.
    assert hpz["hpz_allgathers"] > 0 and base["hpz_allgathers"] == 0
    assert base["checks"] == []
    assert [c["step"] for c in hpz["checks"]] == list(range(STEPS))
    assert all(c["ok"] and c["checked_params"] == len(_sizes()) for c in hpz["checks"])


@pytest.mark.slow
def test_stale_secondary_copy_is_caught_and_changes_training(selftest):
    result, runs, _ = selftest
    base, bad = runs["hpz1"], runs["hpz2-stale"]
    sizes = _sizes()
    from recbrew.bench.zero_selftest import FROZEN

    total = sum(n for n, _ in sizes.values())
    frozen = sum(sizes[name][0] for name in FROZEN)
    # Step 0: every secondary copy still holds the pre-load weights; each element is checked once by its
    # owner (slice) and once per rank (full). Later steps: trainable copies were rebuilt, frozen ones stay stale.
    assert [(c["slice_mismatches"], c["full_mismatches"]) for c in bad["checks"]] == \
        [(total, 4 * total)] + [(frozen, 4 * frozen)] * (STEPS - 1)
    assert sorted(bad["checks"][-1]["mismatched_params"]) == sorted(FROZEN)
    assert bad["hpz_allgathers"] == runs["hpz2"]["hpz_allgathers"]
    cmp = next(c for c in result["comparisons"] if c["label"] == "hpz2-stale")
    assert cmp["first_departing_step"] == 0 and not cmp["weights_identical"] and cmp["detected"]
    assert all(a != b for a, b in zip(base["losses"], bad["losses"], strict=True))


@pytest.mark.slow
def test_zeroed_copy_on_one_rank_needs_the_full_check(selftest):
    """Rank 1's secondary copy holds only elements that ranks 2 and 3 own as primary: no rank of its hpZ
    group can see the fault in its own slice, only the full comparison does."""
    result, runs, _ = selftest
    base, bad = runs["hpz1"], runs["hpz2-zeroed"]
    sizes = _sizes()
    from recbrew.bench.zero_selftest import FROZEN

    second_half = sum(h for _, h in sizes.values())
    frozen_half = sum(sizes[name][1] for name in FROZEN)
    # Ranks 0 and 1 (the faulted hpZ group) each see the zeroed half.
    assert [(c["slice_mismatches"], c["full_mismatches"]) for c in bad["checks"]] == \
        [(0, 2 * second_half)] + [(0, 2 * frozen_half)] * (STEPS - 1)
    assert bad["faulted_copies"] == len(sizes)
    # Only the faulted group computes on zeroed weights at step 0.
    step0 = bad["rank_losses"][0]
    assert step0[2:] == base["rank_losses"][0][2:] and step0[0] != base["rank_losses"][0][0]
    assert step0[1] != base["rank_losses"][0][1]
    cmp = next(c for c in result["comparisons"] if c["label"] == "hpz2-zeroed")
    assert cmp["first_departing_step"] == 0 and not cmp["weights_identical"] and cmp["as_expected"]


@pytest.mark.slow
def test_removing_the_fault_restores_identity(selftest):
    """The clean hpZ run comes after the faulted ones in the same processes and matches hpZ off again."""
    result, runs, _ = selftest
    assert [r["label"] for r in result["runs"]] == ["hpz1", "hpz2-stale", "hpz2-zeroed", "hpz2"]
    cmp = {c["label"]: c for c in result["comparisons"]}
    assert cmp["hpz2"]["losses_identical"] and cmp["hpz2"]["weights_identical"] and cmp["hpz2"]["as_expected"]
    assert cmp["hpz2"]["max_loss_difference"] == 0.0

    from recbrew.bench.zero_selftest import format_selftest

    text = format_selftest(result)
    assert text.splitlines()[-1] == "ok"
    assert "hpz2-zeroed" in text and "identical to baseline" in text
