"""hpZ self-test: a tiny odd-sized model trained under ZeRO-3 with hpZ off, on, and on with a fault.

Run one rank per process under torchrun (``python -m recbrew.bench.zero_selftest --out DIR``), or call
:func:`run_selftest`, which launches torchrun on 127.0.0.1 and returns the parsed ``results.json``.
Every run loads its weights the way ``from_pretrained`` does under ``zero.Init`` (rank 0 writes inside
``GatheredParameters(modifier_rank=0)``), trains a few seeded steps and records per-step losses, the
final gathered weights, the hpZ integrity reports and the number of all-gathers inside the hpZ group.
The ``stale`` fault keeps the pre-load secondary copies after that load (the bug of DeepSpeed < 0.18.3);
``zeroed`` zeroes one rank's secondary copies (a copy read before it was written, as in < 0.13.5).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from recbrew.data.io import atomic_write_text
from recbrew.errors import RecbrewError, UserError
from recbrew.models.smollm2 import cache_dir

FAULTS = ("stale", "zeroed")
#: The rank whose secondary copies the ``zeroed`` fault wipes: it is not the first rank of its hpZ group,
#: so its copy holds no element that a rank of its own group owns as primary shard.
ZEROED_RANK = 1
SHAPES = {"vocab": 37, "dim": 13, "hidden": 29, "inner": 11, "classes": 7, "gate": 3}


class TinyRanker(nn.Module):
    """Odd sizes everywhere (every shard is padded); frozen layers keep their hpZ copies across steps.

    ``embed`` and ``mix`` are frozen like a LoRA base model; ``gate`` has fewer elements than ranks.
    """

    def __init__(self):
        super().__init__()
        s = SHAPES
        self.embed = nn.Embedding(s["vocab"], s["dim"])
        self.up = nn.Linear(s["dim"], s["hidden"])
        self.mix = nn.Linear(s["hidden"], s["inner"])
        self.head = nn.Linear(s["inner"], s["classes"])
        self.gate = nn.Parameter(torch.ones(s["gate"]))

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.up(self.embed(ids).mean(dim=1)))
        logits = self.head(torch.tanh(self.mix(h)))
        logits = torch.cat([logits[:, : self.gate.numel()] * self.gate, logits[:, self.gate.numel():]], dim=1)
        return nn.functional.cross_entropy(logits, labels)


FROZEN = ("embed.weight", "mix.weight", "mix.bias")


def reference_weights(seed: int) -> dict[str, torch.Tensor]:
    """The 'pretrained' weights every run loads (same bytes for a seed)."""
    g = torch.Generator().manual_seed(seed)
    model = TinyRanker()
    return {n: torch.randn(p.shape, generator=g) * 0.5 for n, p in model.named_parameters()}


def batch(seed: int, rank: int, step: int, size: int = 5, length: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per (rank, step); the label is a function of the tokens, so the model can learn it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + rank * 1_009 + step)
    ids = torch.randint(0, SHAPES["vocab"], (size, length), generator=g)
    return ids, (ids[:, 0] + ids[:, 1]) % SHAPES["classes"]


def ds_config(hpz: int, world_size: int, micro_batch: int) -> dict:
    """The shipped ZeRO-3 config with hpZ set and every parameter forced through the gather path."""
    from recbrew.train.zero import load_deepspeed_config, unresolved_auto  # lazy: loads transformers

    overrides = {
        "train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch * world_size, "gradient_clipping": 1.0,
        "bf16.enabled": False, "fp16.enabled": False, "zero_allow_untested_optimizer": True,
        "zero_optimization.zero_hpz_partition_size": hpz,
        "zero_optimization.reduce_bucket_size": 4096,
        "zero_optimization.stage3_prefetch_bucket_size": 0,
        # Without these a tiny model keeps every parameter resident and never reads a secondary copy.
        "zero_optimization.stage3_param_persistence_threshold": 0,
        "zero_optimization.stage3_max_live_parameters": 0,
        "zero_optimization.stage3_max_reuse_distance": 0,
        "hpz_integrity_check": {"every_n_steps": 1, "on_mismatch": "warn", "mode": "full"},
    }
    config = load_deepspeed_config("zero3", world_size=world_size, overrides=overrides)
    assert not unresolved_auto(config), unresolved_auto(config)
    return config


@contextlib.contextmanager
def count_hpz_allgathers():
    """Count DeepSpeed's parameter all-gathers issued on the hpZ group (``counter["hpz"]``) and others."""
    from deepspeed.runtime.zero import partition_parameters as pp
    from deepspeed.utils import groups

    counter = {"hpz": 0, "other": 0}
    original = pp._dist_allgather_fn

    def counted(input_tensor, output_tensor, group=None):
        intra = groups._get_zero_param_intra_parallel_group()
        counter["hpz" if intra is not None and group is intra else "other"] += 1
        return original(input_tensor, output_tensor, group=group)

    # all_gather_coalesced looks the function up in the module at call time.
    pp._dist_allgather_fn = counted
    try:
        yield counter
    finally:
        pp._dist_allgather_fn = original


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _build_model(config: dict, hpz: int, seed: int) -> tuple[TinyRanker, list[nn.Parameter]]:
    """The model partitioned under ``zero.Init`` with its frozen layers set; its parameters in ``ds_id`` order."""
    import deepspeed
    from deepspeed.utils import groups

    torch.manual_seed(seed)
    # DeepSpeed creates the hpZ groups once per process; later runs must be handed the existing group.
    intra = groups._get_zero_param_intra_parallel_group() if hpz > 1 else None
    with deepspeed.zero.Init(config_dict_or_path=config, zero_param_parallel_group=intra):
        model = TinyRanker()
    for name, p in model.named_parameters():
        p.requires_grad_(name not in FROZEN)
    params = [p for _, p in sorted(model.named_parameters(), key=lambda item: item[1].ds_id)]
    return model, params


def _load_weights(model: TinyRanker, params: list[nn.Parameter], seed: int, fault: str | None, rank: int) -> int:
    """Load the reference weights as transformers does under zero.Init, then inject ``fault`` into the hpZ
    secondary copies; returns how many copies this rank faulted."""
    import deepspeed

    # Rank 0 writes, DeepSpeed broadcasts and re-partitions both copies on exit.
    before = {p.ds_id: p.ds_secondary_tensor.clone() for p in params if p.ds_secondary_tensor is not None}
    weights = reference_weights(seed)
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        if rank == 0:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(weights[name])
    faulted = 0
    for p in params:
        if p.ds_secondary_tensor is None:
            continue
        if fault == "stale":
            p.ds_secondary_tensor.copy_(before[p.ds_id])
            faulted += 1
        elif fault == "zeroed" and rank == ZEROED_RANK:
            p.ds_secondary_tensor.zero_()
            faulted += 1
    return faulted


def _train_steps(engine, callback, *, steps: int, seed: int, rank: int, world: int,
                 micro_batch: int) -> tuple[list[float], list[list[float]], dict]:
    """Train ``steps`` seeded steps with the hpZ integrity callback around each: the mean loss per step, every
    rank's loss per step and the all-gather counts."""
    import torch.distributed as dist

    state = SimpleNamespace(global_step=0)
    callback.on_train_begin(None, state, None, model=engine.module)
    losses, rank_losses = [], []
    with count_hpz_allgathers() as counter, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mismatches are recorded, not printed per step
        for step in range(steps):
            state.global_step = step
            callback.on_step_begin(None, state, None, model=engine.module)
            ids, labels = batch(seed, rank, step, micro_batch)
            loss = engine(ids, labels)
            engine.backward(loss)
            engine.step()
            callback.on_step_end(None, state, None)
            every = [torch.zeros(()) for _ in range(world)]
            dist.all_gather(every, loss.detach().float())
            rank_losses.append([float(x) for x in every])
            losses.append(float(torch.stack(every).mean()))
    callback.on_train_end(None, state, None)
    return losses, rank_losses, counter


def _gathered_weights(engine, rank: int) -> dict[str, torch.Tensor] | None:
    """The full trained weights on rank 0 (None elsewhere); every rank must call it."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        return {n: p.detach().clone() for n, p in engine.module.named_parameters()} if rank == 0 else None


def train_once(*, hpz: int, fault: str | None, steps: int, seed: int, label: str, out_dir: Path) -> dict | None:
    """One run on every rank; rank 0 returns its record (and writes ``<label>.weights.pt``)."""
    import deepspeed
    import torch.distributed as dist

    from recbrew.train.zero import HpzIntegrityCallback  # lazy: loads transformers

    rank, world = dist.get_rank(), dist.get_world_size()
    micro_batch = 5
    config = ds_config(hpz, world, micro_batch)
    model, params = _build_model(config, hpz, seed)
    faulted_total = torch.tensor(_load_weights(model, params, seed, fault, rank))
    dist.all_reduce(faulted_total)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.05)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    callback = HpzIntegrityCallback.from_deepspeed_config(config)
    losses, rank_losses, counter = _train_steps(engine, callback, steps=steps, seed=seed, rank=rank, world=world,
                                                micro_batch=micro_batch)

    final = _gathered_weights(engine, rank)
    record = None
    if rank == 0:
        path = out_dir / f"{label}.weights.pt"
        torch.save(final, path)
        record = {
            "label": label, "hpz": hpz, "fault": fault, "faulted_copies": int(faulted_total), "steps": steps,
            "losses": losses, "rank_losses": rank_losses,
            "weights_file": path.name, "weights_sha256": _digest(final),
            "hpz_allgathers": counter["hpz"], "dp_allgathers": counter["other"],
            "checks": [r.to_dict() for r in callback.reports],
            "slice_mismatches": sum(r.slice_mismatches for r in callback.reports),
            "full_mismatches": sum(r.full_mismatches or 0 for r in callback.reports),
        }
    if hasattr(engine, "destroy"):
        engine.destroy()
    dist.barrier()
    return record


def _compare(base: dict, run: dict) -> dict:
    """How an hpZ run relates to the hpZ-off baseline, and whether that is what it should be."""
    pairs = list(zip(base["losses"], run["losses"], strict=True))
    departs = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
    identical = departs is None and base["weights_sha256"] == run["weights_sha256"]
    detected = run["full_mismatches"] > 0
    # A clean run must match bit for bit, pass every check and really use the hpZ path; a faulted run
    # must be caught by the (full) check.
    expected = (detected and run["faulted_copies"] > 0) if run["fault"] else (
        identical and not detected and run["slice_mismatches"] == 0 and run["hpz_allgathers"] > 0)
    return {"label": run["label"], "fault": run["fault"], "losses_identical": departs is None,
            "first_departing_step": departs, "weights_identical": base["weights_sha256"] == run["weights_sha256"],
            "max_loss_difference": max(abs(a - b) for a, b in pairs), "detected": detected, "as_expected": expected}


def format_selftest(result: dict) -> str:
    """A few lines for the terminal: one per run, then the verdict."""
    lines = [f"hpZ self-test: DeepSpeed {result['deepspeed']}, {result['world_size']} ranks, hpZ {result['hpz']}, "
             f"{result['steps']} steps"]
    by_label = {c["label"]: c for c in result["comparisons"]}
    for run in result["runs"]:
        c = by_label.get(run["label"])
        vs = "baseline" if c is None else (
            "identical to baseline" if c["losses_identical"] and c["weights_identical"]
            else f"departs at step {c['first_departing_step']} (max loss diff {c['max_loss_difference']:.3g})")
        lines.append(f"  {run['label']:<14} hpZ all-gathers {run['hpz_allgathers']:>4}  mismatches slice "
                     f"{run['slice_mismatches']:>6} full {run['full_mismatches']:>6}  {vs}")
    lines.append("ok" if result["ok"] else "FAILED: " + ", ".join(c["label"] for c in result["comparisons"]
                                                                  if not c["as_expected"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recbrew.bench.zero_selftest", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results.json and the final weights")
    parser.add_argument("--hpz", type=int, default=2, help="hpZ group size of the hpZ runs")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", default="none", help=f"comma list of none, {', '.join(FAULTS)}: one hpZ run each")
    args = parser.parse_args(argv)
    faults = [None if f == "none" else f for f in args.faults.split(",")]
    if any(f not in (None, *FAULTS) for f in faults):
        parser.error(f"--faults: expected none or {', '.join(FAULTS)}")

    import deepspeed
    import torch.distributed as dist

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    deepspeed.init_distributed(dist_backend="gloo")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # hpZ off first: DeepSpeed creates the hpZ groups once per process and every later run reuses them.
    plan = [("hpz1", 1, None)] + [(f"hpz{args.hpz}" + (f"-{f}" if f else ""), args.hpz, f) for f in faults]
    runs = [train_once(hpz=h, fault=f, steps=args.steps, seed=args.seed, label=label, out_dir=out)
            for label, h, f in plan]
    if dist.get_rank() == 0:
        base = runs[0]
        result = {
            "deepspeed": deepspeed.__version__, "torch": torch.__version__, "world_size": dist.get_world_size(),
            "hpz": args.hpz, "steps": args.steps, "seed": args.seed, "baseline": base["label"],
            "runs": runs, "comparisons": [_compare(base, r) for r in runs[1:]],
        }
        result["ok"] = base["hpz_allgathers"] == 0 and all(c["as_expected"] for c in result["comparisons"])
        atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def selftest_env() -> dict[str, str]:
    """Environment of the ranks: CPU accelerator, one thread each, a persistent extension cache."""
    env = dict(os.environ)
    # Four ranks share one machine: gloo on the CPU accelerator, whatever GPUs are present.
    env["DS_ACCELERATOR"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def run_selftest(nproc: int = 4, hpz: int = 2, steps: int = 6, fault: str | None | list[str | None] = None,
                 out_dir: str | Path | None = None, *, seed: int = 0, timeout: float = 900) -> dict:
    """Launch the self-test with torchrun (``nproc`` CPU ranks, gloo) and return its ``results.json``.

    Runs hpZ off (the baseline), then hpZ=``hpz`` once per entry of ``fault`` (None, ``"stale"``,
    ``"zeroed"``, or a list of them). ``comparisons`` says which runs match the baseline bit for bit.
    """
    faults = fault if isinstance(fault, list) else [fault]
    if any(f not in (None, *FAULTS) for f in faults):
        raise UserError(f"unknown hpZ fault {faults!r}; expected None or one of {', '.join(FAULTS)}")
    if hpz < 2 or nproc % hpz:
        raise UserError(f"hpZ group size {hpz} must be >= 2 and divide the number of ranks {nproc}")
    if nproc // hpz < 2:
        raise UserError(f"{nproc} ranks with hpZ {hpz} is one group: use more ranks than the hpZ group size")
    with contextlib.ExitStack() as stack:
        out = Path(out_dir) if out_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "recbrew.bench.zero_selftest",
               "--out", str(out), "--hpz", str(hpz), "--steps", str(steps), "--seed", str(seed),
               "--faults", ",".join(f or "none" for f in faults)]
        proc = subprocess.run(cmd, env=selftest_env(), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise RecbrewError(f"hpZ self-test failed (exit {proc.returncode}):\n{tail}")
        result = json.loads((out / "results.json").read_text())
        result["out_dir"] = str(out) if out_dir else None
        return result


if __name__ == "__main__":
    main()
