"""The sandboxed Jinja environment every prompt template renders in."""

from __future__ import annotations

from pathlib import Path

import jinja2
from jinja2.runtime import Macro
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


_DICT_ATTRIBUTES = frozenset(dir(dict))


class PromptEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with quicker lookups of what prompt templates touch most."""

    def make_globals(self, d):
        # A flat copy instead of Jinja's ChainMap over the environment's globals: every block render
        # and every `{% import %}` walks the template's globals, and a ChainMap walks them slowly.
        # recbrew never changes an environment's globals after creating it.
        return {**self.globals, **(d or {})}

    def getattr(self, obj, attribute):
        # `member.name` on a plain dict: the sandbox first tries (and fails) a Python attribute, which
        # costs an exception per lookup. Dict keys that are not dict attributes resolve the same way.
        kind = type(obj)
        if kind is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        if kind is jinja2.environment.TemplateModule and attribute[:1] != "_":
            # An imported macro (`item_m.block`): the sandbox would find it safe after its checks.
            value = obj.__dict__.get(attribute)
            if type(value) is Macro:
                return value
        return super().getattr(obj, attribute)


def make_environment(directory: str | Path | None = None) -> ImmutableSandboxedEnvironment:
    """Sandboxed, strict environment: unknown variables, internals and mutating calls are errors."""
    return PromptEnvironment(
        loader=jinja2.FileSystemLoader([str(p) for p in prompts_dir(directory)]),
        undefined=jinja2.StrictUndefined,
        # Templates do not change during a run: skip the per-lookup file checks.
        auto_reload=False,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
