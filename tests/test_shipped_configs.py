"""Every config recbrew ships loads and validates by the name users give it: a broken shipped file is caught here,
not by the first user who runs it (the 7B GPU recipe included, whose run needs GPUs this suite does not have)."""

from __future__ import annotations

import pytest

from recbrew import config
from recbrew.baselines.config import run_config
from recbrew.tasks.catalog import load_catalog
from recbrew.train.config import load_config
from recbrew.train.zero import load_deepspeed_config
from recbrew.world.config import WorldConfig


@pytest.mark.parametrize("name", config.shipped_names("train"))
def test_every_shipped_training_config_validates(name):
    cfg = load_config(name)
    assert cfg.epochs > 0 or cfg.max_steps > 0
    if cfg.deepspeed:  # its DeepSpeed config resolves and validates for a GPU run of 8 ranks
        ds = load_deepspeed_config(cfg.deepspeed, world_size=8, accelerator="cuda", overrides=cfg.deepspeed_overrides)
        assert ds["zero_optimization"]["stage"] in (2, 3)


def test_the_7b_recipe_is_zeropp_with_the_hpz_group_one_node():
    cfg = load_config("7b-gpu")
    ds = load_deepspeed_config(cfg.deepspeed, world_size=16, accelerator="cuda", overrides=cfg.deepspeed_overrides)
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["zero_hpz_partition_size"] == 8


@pytest.mark.parametrize("name", config.shipped_names("baselines"))
def test_every_shipped_baseline_config_validates_for_its_model(name):
    model = name.rsplit("/", 1)[-1]
    cfg = run_config(model, name)
    assert cfg.model_name == model and cfg.source.endswith(f"{name.replace('movielens/', 'movielens/baselines/')}.yaml")


@pytest.mark.parametrize("name", config.shipped_names("deepspeed", (".json",)))
def test_every_shipped_deepspeed_config_validates(name):
    assert load_deepspeed_config(name, world_size=8, accelerator="cuda")["zero_optimization"]["stage"] in (2, 3)


@pytest.mark.parametrize("name", config.shipped_names("world"))
def test_every_shipped_world_config_validates(name):
    cfg = config.load(WorldConfig, "world", name)
    assert cfg.members > 0 and cfg.surfaces


def test_the_movielens_task_folder_loads():
    assert "movies_like" in load_catalog(config.shipped_dir("movielens") / "tasks")


def test_every_shipped_config_folder_is_covered_here():
    """A new folder of shipped configs needs its loader test in this module."""
    root = config.shipped_dir("train").parent
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")) == [
        "baselines", "deepspeed", "movielens", "train", "world"]
