"""Keep the engine from outliving the process that started it, even one killed with SIGKILL.

`spawn(cmd)` starts ``python -m recbrew.serve.guard --parent PID -- CMD...``, a small launcher between
the gateway and the engine. The launcher

- asks the kernel for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``, Linux) and also
  checks its parent pid four times a second, which works everywhere and catches a parent that died
  before the request was made;
- starts the engine in a process group of its own, with the same death signal pointed at itself, so
  that the engine does not outlive even a SIGKILLed launcher;
- stops the engine's whole group (vLLM's engine processes included) when the parent goes away or
  sends SIGTERM / SIGINT: SIGTERM first, SIGKILL for whatever is left after the grace period;
- exits with the engine's exit code when the engine exits on its own.

``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not when its process does.
`spawn` asks for it only from the main thread, which lives as long as the process; started from any
other thread, the launcher relies on the parent-pid check alone (a quarter of a second later at most).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1
#: Seconds between two checks of the parent pid.
_POLL = 0.25
#: Grace period once the parent is gone: nobody waits for a clean stop, and the engine must not linger.
ORPHAN_GRACE = 5.0


def set_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when the thread that forked it exits; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def spawn(cmd: Sequence[str], *, env: dict | None = None, stdout=None, grace: float = 20.0) -> subprocess.Popen:
    """Start ``cmd`` behind the launcher; the returned process is the launcher (SIGTERM it to stop the engine)."""
    guard = [sys.executable, "-m", "recbrew.serve.guard", "--parent", str(os.getpid()), "--grace", str(grace)]
    if threading.current_thread() is threading.main_thread():
        guard.append("--death-signal")
    # A session of its own: a Ctrl-C in the terminal reaches the gateway only, which then stops the engine.
    return subprocess.Popen([*guard, "--", *cmd], stdout=stdout, stderr=subprocess.STDOUT if stdout else None,
                            env=env, start_new_session=True)


def _die_with(parent: int) -> None:
    """In the engine, between fork and exec: SIGTERM when the launcher goes (the launcher has no threads)."""
    set_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the launcher was killed before the death signal was armed
        os._exit(1)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group led by ``proc``, wait up to ``grace`` s for ``proc``, then SIGKILL the group."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)  # also what the engine left behind when it exited itself
    proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbrew.serve.guard", description=__doc__.splitlines()[0])
    parser.add_argument("--parent", type=int, required=True, help="the process whose end stops the engine")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--death-signal", action="store_true", help="also use PR_SET_PDEATHSIG (Linux)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the engine command")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no engine command after --")

    asked = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: asked.append(signum))
    if args.death_signal:
        set_death_signal(signal.SIGTERM)
    if os.getppid() != args.parent:  # the parent died before the death signal was armed
        return 128 + signal.SIGTERM
    me = os.getpid()
    engine = subprocess.Popen(cmd, start_new_session=True, preexec_fn=lambda: _die_with(me))
    while not asked and os.getppid() == args.parent:
        code = engine.poll()
        if code is not None:
            _signal_group(engine.pid, signal.SIGKILL)  # engine processes it left behind
            return code if code >= 0 else 128 - code
        time.sleep(_POLL)
    orphaned = os.getppid() != args.parent
    stop_group(engine, min(args.grace, ORPHAN_GRACE) if orphaned else args.grace)
    return 128 + (asked[0] if asked else signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
