"""Multi-process launch: `recbrew train --deepspeed CONFIG --nproc N` re-runs the job under torchrun.

Each rank runs ``python -m recbrew.train.launch CONFIG.json``. On CPU DeepSpeed uses its CPU
accelerator and the gloo backend; ops it JIT-builds are cached under ``TORCH_EXTENSIONS_DIR``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from recbrew.models.smollm2 import cache_dir
from recbrew.train.config import TrainConfig
from recbrew.train.run import train


def distributed_env(cuda: bool) -> dict[str, str]:
    """The environment of a launched job: loopback rendezvous, CPU accelerator without CUDA, cached ops."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))
    if not cuda:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def launch(cfg: TrainConfig, nproc: int) -> int:
    """Run ``cfg`` on ``nproc`` ranks of this machine (torchrun, 127.0.0.1); returns the exit code."""
    import torch

    from recbrew.serve.engine import free_port  # lazy: loads httpx

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = out / ".launch-config.json"
    spec.write_text(json.dumps(cfg.model_dump()))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "recbrew.train.launch", str(spec)]
    return subprocess.call(cmd, env=distributed_env(torch.cuda.is_available()))


def main(argv: list[str]) -> None:
    cfg = TrainConfig(**json.loads(Path(argv[0]).read_text()))
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = train(cfg, progress=rank == 0)
    except BaseException:
        _leave_group(wait=False)  # the other ranks may never reach a barrier
        raise
    _leave_group(wait=True)
    if rank == 0:
        print(json.dumps({"model_dir": str(result.model_dir), "final_loss": result.final_loss,
                          "steps": result.steps}))


def _leave_group(wait: bool) -> None:
    """Close the process group (after every rank is done, with ``wait``): a rank that exits with gloo's threads
    still running can abort ("terminate called without an active exception") after its work is done."""
    import torch.distributed as dist  # lazy: loads torch

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
