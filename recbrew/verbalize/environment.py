"""The sandboxed Jinja environment every prompt template renders in."""

from __future__ import annotations

from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from recbrew import assets
from recbrew.errors import UserError


class TemplateError(UserError):
    """A prompt template is missing, malformed, or uses something it may not."""


def _template_line(exc: BaseException) -> tuple[str | None, int | None]:
    """File and line of the innermost template frame in a rendering traceback."""
    name, line = getattr(exc, "filename", None) or getattr(exc, "name", None), getattr(exc, "lineno", None)
    tb = exc.__traceback__
    while tb is not None:
        fname = tb.tb_frame.f_code.co_filename
        if fname.endswith(".j2"):
            name, line = fname, tb.tb_lineno
        tb = tb.tb_next
    return name, line


def template_error(exc: BaseException, template: str) -> TemplateError:
    """Turn any Jinja failure into one line naming the template file and line."""
    name, line = _template_line(exc)
    where = f"{name or template}:{line}" if line else (name or template)
    if isinstance(exc, SecurityError):
        what = f"not allowed in a prompt template: {exc}"
    elif isinstance(exc, jinja2.UndefinedError):
        what = f"unknown template variable: {exc.message}"
    elif isinstance(exc, jinja2.TemplateSyntaxError):
        what = f"template syntax error: {exc.message}"
    elif isinstance(exc, jinja2.TemplateNotFound):
        what = f"template not found: {exc.name}"
    else:
        what = f"{type(exc).__name__}: {exc}"
    return TemplateError(f"{where}: {what}")


def prompts_dir(directory: str | Path | None = None) -> list[Path]:
    """Search path for templates: the user's folder first, then the shipped prompts."""
    shipped = assets.path("prompts")
    if directory is None:
        return [shipped]
    path = Path(directory)
    if not path.is_dir():
        raise TemplateError(f"{path}: prompts directory not found")
    return [path, shipped]


def make_environment(directory: str | Path | None = None) -> ImmutableSandboxedEnvironment:
    """Sandboxed, strict environment: unknown variables, internals and mutating calls are errors."""
    return ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader([str(p) for p in prompts_dir(directory)]),
        undefined=jinja2.StrictUndefined,
        # Templates do not change during a run: skip the per-lookup file checks.
        auto_reload=False,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
