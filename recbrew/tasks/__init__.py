"""The task catalog: YAML definitions of ranking tasks and their loader."""

from recbrew.tasks.catalog import TaskError, get_task, load_catalog, load_task, parse_task
from recbrew.tasks.spec import Kind, Split, TaskSpec

__all__ = ["Kind", "Split", "TaskError", "TaskSpec", "get_task", "load_catalog", "load_task", "parse_task"]
