"""`recbrew.scoring.registry`: one way from a spec to a Scorer, and a new model family as one registered entry."""

from __future__ import annotations

import numpy as np
import pytest

from recbrew.errors import UserError
from recbrew.scoring import registry


def test_specs_find_their_family(tmp_path):
    for folder, file in (("lirank", "model.pt"), ("pop", "popularity.json")):  # as `baselines train` writes them
        (tmp_path / folder).mkdir()
        (tmp_path / folder / file).write_text("")
        assert registry.family_of(tmp_path / folder).name == "baseline"
    assert registry.family_of("oracle").name == "oracle"
    assert registry.family_of("popularity").name == "popularity"
    assert registry.family_of("smollm2").name == "lm"
    with pytest.raises(UserError, match="popularity is fitted on an examples folder"):
        registry.load_scorer("popularity")
    with pytest.raises(UserError, match="not found: use 'smollm2' or a folder"):
        registry.family_of(tmp_path / "nowhere").fingerprint(str(tmp_path / "nowhere"))


class Constant:
    """A model family of one's own: every candidate gets the same probability."""

    views = ("structured",)

    def __init__(self, p: float):
        self.name, self.p = f"const:{p}", p

    def score(self, requests):
        return [np.full(len(r["candidate_ids"]), self.p) for r in requests]


def test_a_new_family_is_one_entry_and_eval_scores_it(small_setup, tmp_path, monkeypatch):
    from recbrew.eval.run import run_eval

    monkeypatch.setattr(registry, "FAMILIES", list(registry.FAMILIES))  # the registration ends with the test
    registry.register(registry.Family("constant", lambda spec: spec.startswith("const:"),
                                      lambda spec, options: Constant(float(spec.split(":")[1])),
                                      lambda spec: spec))
    root = small_setup(tmp_path, ["feed_like"], max_train=40, max_test=20, tiny_seed=None)
    result = run_eval(root / "ex", {"flat": "const:0.3", "pop": "popularity"}, root / "eval", bootstrap=0,
                      progress=False, include_oracle=False)
    assert result.macro_auc["flat"]["T1"] == pytest.approx(0.5)
    flat = next(m for m in result.meta["models"] if m["name"] == "flat")
    assert flat["kind"] == "scorer" and flat["spec"] == "const:0.3"
