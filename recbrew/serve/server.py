"""`recbrew serve`: start the vLLM engine, then the recbrew gateway in front of it; stop both together."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path

from recbrew.errors import UserError
from recbrew.examples.build import load_build_tokenizer
from recbrew.examples.folder import Examples
from recbrew.models.loading import DEFAULT_MODEL, resolve
from recbrew.scoring.registry import family_of, load_scorer
from recbrew.serve.engine import VLLMServer, bind_port
from recbrew.tasks import load_catalog
from recbrew.verbalize.collab import load_models, require_models


def engine_command_args(tensor_parallel: int = 1, engine_args: list[str] | None = None) -> list[str]:
    """The vLLM arguments of `recbrew serve --tensor-parallel-size N --engine-arg ARG ...`."""
    if tensor_parallel < 1:
        raise UserError(f"--tensor-parallel-size {tensor_parallel}: at least 1")
    args = ["--tensor-parallel-size", str(tensor_parallel)] if tensor_parallel > 1 else []
    for arg in engine_args or []:
        args += shlex.split(arg)
    return args


def serve(model: str, *, lora: Path | None = None, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, corpus: Path | None = None, tasks_dir=None, prompts_dir=None,
          max_candidates: int = 100, max_model_len: int = 4096, prefix_caching: bool = True,
          ready_timeout: float = 600.0, log=print, examples: Path | None = None, tensor_parallel: int = 1,
          engine_args: list[str] | None = None) -> None:
    """Serve ``model``; with ``examples`` the tasks are the specs recorded there (checked against ``tasks_dir``),
    rendered in the style the examples were built in, over their Corpus unless ``corpus`` names another.
    ``tensor_parallel`` GPUs share the model (vLLM's tensor parallelism); ``engine_args`` go to vLLM as they are."""
    from recbrew.serve.app import create_app  # lazy: loads fastapi
    from recbrew.serve.ranker import RankService  # lazy: loads httpx

    catalog, style, build_tokenizer, collab = None, None, DEFAULT_MODEL, None
    if examples is not None:
        folder = Examples.open(examples)
        catalog, style = folder.catalog(tasks_dir), folder.config.get("style")
        collab = load_models(folder.root, catalog)
        build_tokenizer = folder.config.get("tokenizer", DEFAULT_MODEL)
        if corpus is None:
            corpus = folder.corpus_dir("start the server with --corpus DIR (or without --examples)")
    if corpus is not None and not Path(corpus).is_dir():
        raise UserError(f"{corpus}: no such Corpus folder")
    if corpus is not None and examples is None:  # refused here, before the engine loads, not by RankService after
        require_models(load_catalog(tasks_dir), {})
    if family_of(model).name == "baseline":
        if corpus is None:
            raise UserError(f"{model}: a classic ranker scores Corpus ids: give --corpus DIR (or --examples)")
        sock = bind_port(host, port)
        scorer = load_scorer(model)
        # Its prompts render and count tokens with the tokenizer the examples were built with.
        service = RankService(tokenizer=load_build_tokenizer(build_tokenizer), corpus_dir=corpus, tasks_dir=tasks_dir, prompts_dir=prompts_dir,
                              max_candidates=max_candidates, max_model_len=max_model_len, catalog=catalog,
                              default_style=style, scorer=scorer, collab=collab)
        log(f"recbrew is serving {scorer.name} from {model} on http://{host}:{port} (/v1/rank, /v1/models)")
        _run_gateway(create_app(service, api_key), sock)
        return
    model_dir = resolve(model)
    sock = bind_port(host, port)
    engine = VLLMServer(model_dir, lora=lora, prefix_caching=prefix_caching, max_model_len=max_model_len,
                        extra_args=engine_command_args(tensor_parallel, engine_args))
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal with the previous
    # handler in place: make that handler an exception, so `finally` always stops the engine too.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        log(f"starting vLLM on 127.0.0.1:{engine.port} for {model_dir} (this takes 20-60 s on CPU)...")
        engine.start(ready_timeout)
        service = RankService(engine_url=engine.url, engine_key=engine.api_key, served_model=engine.served_name,
                              tokenizer=model_dir, corpus_dir=corpus, tasks_dir=tasks_dir, prompts_dir=prompts_dir,
                              max_candidates=max_candidates, max_model_len=max_model_len, catalog=catalog,
                              default_style=style, collab=collab)
        log(f"recbrew is serving {engine.served_name} on http://{host}:{port} (/v1/rank, /v1/completions, "
            "/v1/chat/completions, /v1/models)")
        _run_gateway(create_app(service, api_key), sock)
    finally:
        engine.stop()
        sock.close()


def _run_gateway(app, sock) -> None:
    """Serve ``app`` with uvicorn on the socket `bind_port` holds (SIGINT/SIGTERM stop it gracefully)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)
