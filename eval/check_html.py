"""Open a report in headless Chromium and fail on script errors or a page that did not render.

    python -m recbrew.eval.check_html runs/eval/report.html

Chromium dumps the DOM after load (``--dump-dom``) and logs console messages to stderr; the report's
inline script sets ``data-rendered="1"`` on ``<body>``, so the mark in the dump proves the page ran.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from recbrew.errors import UserError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--dump-dom")
MARK = re.compile(r"<body[^>]*\bdata-rendered=\"1\"")
# External references: anything the page would fetch from the network.
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)
CONSOLE_ERROR = re.compile(r"(Uncaught|CONSOLE.*(Error|error))")


@dataclass
class HtmlCheck:
    path: Path
    rendered: bool
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rendered and not self.errors


def find_browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise UserError("no Chromium found (looked for: " + ", ".join(BROWSERS) + "); install it with "
                    "`apt-get install chromium` (`make setup` does it when run as root)")


def check_html(path: str | Path, timeout: float = 60.0, browser: str | None = None) -> HtmlCheck:
    """Load ``path`` in headless Chromium; errors: script errors in the console, external URLs, no render mark."""
    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    errors = [f"external reference: {m.group(0)}" for m in EXTERNAL.finditer(path.read_text(encoding="utf-8"))]
    with tempfile.TemporaryDirectory(prefix="recbrew-chromium-") as profile:
        cmd = [browser or find_browser(), *FLAGS, f"--user-data-dir={profile}", path.as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return HtmlCheck(path, False, errors + [f"chromium did not finish within {timeout:.0f} s"])
    errors += [line.strip() for line in done.stderr.splitlines() if CONSOLE_ERROR.search(line)]
    rendered = done.returncode == 0 and bool(MARK.search(done.stdout))
    if done.returncode != 0:
        errors.append(f"chromium exited with {done.returncode}")
    return HtmlCheck(path, rendered, errors)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m recbrew.eval.check_html REPORT.html [...]", file=sys.stderr)
        return 2
    status = 0
    for arg in args:
        try:
            result = check_html(arg)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if result.ok:
            print(f"ok: {result.path} rendered in headless Chromium without errors")
        else:
            status = 1
            print(f"FAIL: {result.path}" + ("" if result.rendered else " (did not render)"))
            for e in result.errors:
                print(f"  {e}")
    return status


if __name__ == "__main__":
    sys.exit(main())
