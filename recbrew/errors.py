"""recbrew's one exception family.

A :class:`UserError` is a mistake the user can fix (bad YAML, unknown task, missing column,
bad request). The CLI prints it as one line and exits with code 2; the server answers it with
a 4xx JSON body. Anything else is unexpected and keeps its traceback.
"""

from __future__ import annotations


class RecbrewError(Exception):
    """Base class of every error recbrew raises on purpose."""


class UserError(RecbrewError):
    """A mistake in the user's input; the message names the file/field and what to do."""

    exit_code = 2


class SchemaError(UserError):
    """A table does not match the Corpus schema (missing or mistyped column)."""


class ConfigError(UserError):
    """A configuration value (CLI option, YAML field) is invalid."""


class IntegrityError(UserError):
    """A file of a data folder (examples, Corpus) is missing, damaged or changed since recbrew wrote it."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        #: The file that is not as recorded (the manifest itself when it is the one).
        self.path = path
