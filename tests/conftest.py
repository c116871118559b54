import os
from pathlib import Path

import pytest

# Triton runs kernels on CPU only through its interpreter, which must be chosen before any kernel
# module imports triton.
try:
    import torch

    _cuda = torch.cuda.is_available()
except Exception:  # torch missing or broken: no GPU either way
    _cuda = False
if not _cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if _cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's tokenizer, converted from the installed GGUF once and cached."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from recbrew.models.tokenizers import load_tokenizer

    return load_tokenizer()


# Shared small worlds and models ----------------------------------------------------------------------------
# Generating a world or building recbrew-tiny takes seconds; modules that need the same one share it. The
# shared folders are read-only for tests: a module links them into its own folder and writes beside them.

@pytest.fixture(scope="session")
def shared_world(tmp_path_factory):
    """``shared_world(members, days, seed)``: the folder of a generated world, made once per session."""
    made = {}

    def make(members: int = 300, days: int = 14, seed: int = 2):
        key = (members, days, seed)
        if key not in made:
            from recbrew.world import WorldConfig, generate_world

            out = tmp_path_factory.mktemp(f"world-{members}x{days}-s{seed}") / "world"
            generate_world(WorldConfig(members=members, days=days, seed=seed), out, progress=False)
            made[key] = out
        return made[key]

    return make


@pytest.fixture(scope="session")
def shared_tiny(tmp_path_factory):
    """``shared_tiny(world, preset, seed)``: a recbrew-tiny model built on ``world``'s vocabulary, once."""
    made = {}

    def make(world, preset: str = "tiny", seed: int = 0):
        key = (str(Path(world).resolve()), preset, seed)
        if key not in made:
            from recbrew.models.tiny import build_tiny

            out = tmp_path_factory.mktemp(f"{preset}-s{seed}") / preset
            build_tiny(world, out, preset, seed=seed)
            made[key] = out
        return made[key]

    return make


@pytest.fixture(scope="session")
def small_setup(shared_world, shared_tiny):
    """``small_setup(root, tasks, max_train, max_test, world=(300, 14, 2), tiny_seed=0)``: ``root/world`` and
    ``root/tiny`` linked to shared ones, and examples of ``tasks`` built into ``root/ex``; returns ``root``."""

    def make(root, tasks, *, max_train: int, max_test: int, world=(300, 14, 2), tiny_seed: int | None = 0):
        from recbrew.examples.build import BuildConfig, build_examples

        (root / "world").symlink_to(shared_world(*world), target_is_directory=True)
        if tiny_seed is not None:
            (root / "tiny").symlink_to(shared_tiny(root / "world", "tiny", tiny_seed), target_is_directory=True)
        build_examples(root / "world", root / "ex", BuildConfig(tasks=tasks, test_days=4, gap_days=1,
                                                                max_train=max_train, max_test=max_test,
                                                                tokenizer="none"), progress=False)
        return root

    return make


@pytest.fixture(scope="session")
def quick_lirank():
    """``quick_lirank(examples, out, *overrides)``: LiRank trained for one epoch on one thread, without validation
    and with a 10-step history (``overrides`` on top), loaded as a Scorer."""

    def make(examples, out, *overrides: str):
        import torch

        from recbrew.baselines.config import run_config
        from recbrew.baselines.scorer import load_scorer
        from recbrew.baselines.train import train_model

        torch.set_num_threads(1)
        cfg = run_config("lirank", overrides=["train.epochs=1", "train.val_fraction=0", "features.history_len=10",
                                              *overrides])
        train_model(cfg, examples, out, progress=False)
        return load_scorer(out)

    return make


@pytest.fixture(scope="session")
def cli_code():
    """``cli_code(*args)``: run `recbrew ARGS` in this process (as `recbrew.cli:main`); its exit code."""
    from recbrew.cli import main

    def run(*args) -> int:
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            return exc.code or 0
        return 0

    return run
