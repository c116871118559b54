"""`python -m recbrew.cli`: the same as the `recbrew` command."""

from recbrew.cli import main

# Guarded: vLLM's engine (`eval --llm-engine vllm`) starts processes that re-import the main module.
if __name__ == "__main__":
    main()
