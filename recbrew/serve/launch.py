"""Run `recbrew serve` as a child process and wait until it answers (benchmarks, tests, scripts)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from recbrew.serve.engine import free_port


def start_serve(model: str | Path, *args: str, timeout: float = 900.0, tries: int = 3) -> tuple[subprocess.Popen, str]:
    """Start `recbrew serve MODEL --port <free> ARGS...`; returns the process and its base URL once healthy.

    The free port is picked here and bound by the child: if another process takes it in between, the child
    stops at once with "already in use" and the start is tried again on a new port (``tries`` in all)."""
    for attempt in range(tries):
        port = free_port()
        cmd = [str(Path(sys.executable).parent / "recbrew"), "serve", str(model), "--port", str(port), *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                output = proc.stdout.read()
                if "already in use" in output and attempt + 1 < tries:
                    break
                raise RuntimeError(f"recbrew serve exited with {proc.returncode}: {output[-1000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        else:
            stop_serve(proc)
            raise RuntimeError(f"recbrew serve did not become healthy within {timeout:.0f} s")
    raise AssertionError("unreachable")


def stop_serve(proc: subprocess.Popen, timeout: float = 120.0) -> list[int]:
    """SIGTERM the gateway; returns the pids of its descendants still alive afterwards (none, normally)."""
    if proc.poll() is not None:
        return []
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=timeout)
    _, alive = psutil.wait_procs(children, timeout=30)
    return [p.pid for p in alive]
