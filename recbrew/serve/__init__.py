"""Serving: vLLM's OpenAI-compatible server behind recbrew's gateway, plus `/v1/rank`."""
