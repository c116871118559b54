"""`key=value` command-line overrides shared by the config loaders."""

from __future__ import annotations

import yaml


def yaml_value(raw: str):
    """A command-line value as YAML reads it (numbers, booleans, lists, mappings, null), else the string."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
