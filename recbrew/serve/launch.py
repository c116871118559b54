"""Run `recbrew serve` as a child process and wait until it answers (benchmarks, tests, scripts)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil

from recbrew.serve.engine import free_port, wait_healthy


def start_serve(model: str | Path, *args: str, timeout: float = 900.0, tries: int = 3) -> tuple[subprocess.Popen, str]:
    """Start `recbrew serve MODEL --port <free> ARGS...`; returns the process and its base URL once healthy.

    The free port is picked here and bound by the child: if another process takes it in between, the child
    stops at once with "already in use" and the start is tried again on a new port (``tries`` in all)."""
    for attempt in range(1, tries + 1):
        port = free_port()
        cmd = [str(Path(sys.executable).parent / "recbrew"), "serve", str(model), "--port", str(port), *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        ready = wait_healthy(proc, url, timeout)
        if ready:
            return proc, url
        if ready is None:
            stop_serve(proc)
            raise RuntimeError(f"recbrew serve did not become healthy within {timeout:.0f} s")
        output = proc.stdout.read()
        if "already in use" not in output or attempt == tries:
            raise RuntimeError(f"recbrew serve exited with {proc.returncode}: {output[-1000:]}")
    raise ValueError(f"tries={tries}: at least 1")


def stop_serve(proc: subprocess.Popen, timeout: float = 120.0) -> list[int]:
    """SIGTERM the gateway; returns the pids of its descendants still alive afterwards (none, normally)."""
    if proc.poll() is not None:
        return []
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=timeout)
    _, alive = psutil.wait_procs(children, timeout=30)
    return [p.pid for p in alive]
