"""`recbrew serve MODEL`: vLLM's OpenAI routes plus /v1/rank on one port."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(
    model: Annotated[str, typer.Argument(help="'smollm2', a recbrew-tiny folder, any HF model folder, or a "
                                         "classic ranker trained by `recbrew baselines train` (served in-process, "
                                         "no engine).")],
    lora: Annotated[Path | None, typer.Option("--lora", help="A LoRA adapter folder to serve on top.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API.")] = 8000,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Require 'Authorization: Bearer KEY'.")] = None,
    corpus: Annotated[Path | None, typer.Option("--corpus", help="Corpus whose member/item ids /v1/rank accepts.")] = None,
    examples: Annotated[Path | None, typer.Option("--examples", help="An examples folder: serve the task specs it "
                                                  "was built with (your own tasks need no --tasks-dir), over its "
                                                  "Corpus unless --corpus names another.")] = None,
    tasks_dir: Annotated[Path | None, typer.Option("--tasks-dir", help="Your task folder (with --examples: checked "
                                                   "against the recorded specs).")] = None,
    prompts_dir: Annotated[Path | None, typer.Option("--prompts-dir", help="Your templates folder.")] = None,
    max_candidates: Annotated[int, typer.Option("--max-candidates", help="Candidates per /v1/rank request.")] = 100,
    max_model_len: Annotated[int, typer.Option("--max-model-len", help="Context length of the engine.")] = 4096,
    prefix_caching: Annotated[bool, typer.Option("--prefix-caching/--no-prefix-caching")] = True,
    tensor_parallel: Annotated[int, typer.Option("--tensor-parallel-size", min=1, help="GPUs that share the model "
                                                 "(vLLM's tensor parallelism; docs/scale.md).")] = 1,
    engine_arg: Annotated[list[str] | None, typer.Option("--engine-arg", help="An argument for the vLLM server, "
                                                         "as it is, e.g. --engine-arg '--pipeline-parallel-size 2' "
                                                         "(repeatable).")] = None,
) -> None:
    """Serve a model with vLLM (prefix caching on) behind recbrew's gateway: OpenAI routes + /v1/rank.

    A classic ranker's folder (LiRank, LiGR, DCNv2) is served in-process on /v1/rank with the Corpus's ids."""
    from recbrew.serve.server import serve as run  # lazy: loads httpx

    run(model, lora=lora, host=host, port=port, api_key=api_key, corpus=corpus, tasks_dir=tasks_dir,
        prompts_dir=prompts_dir, max_candidates=max_candidates, max_model_len=max_model_len,
        prefix_caching=prefix_caching, log=typer.echo, examples=examples, tensor_parallel=tensor_parallel,
        engine_args=engine_arg)
