"""Verbalization: Corpus rows -> prompts, through sandboxed Jinja templates with token budgets."""
