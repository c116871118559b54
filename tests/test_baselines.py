"""Classic rankers, component by component: each test states a property the paper's block must have."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbrew.baselines.calibration import IsotonicCalibration
from recbrew.baselines.config import run_config
from recbrew.baselines.cross import AttentionCross, LowRankCross, ResidualCrossNet
from recbrew.baselines.embedding import QREmbedding
from recbrew.baselines.features import (
    ITEM_FIELDS,
    MEMBER_FIELDS,
    FeatureConfig,
    FeatureSpace,
    batch_tensors,
    qr_rows,
    qr_split,
    right_align,
    stable_hash,
)
from recbrew.baselines.gating import GatedMLP
from recbrew.baselines.ligr import LiGR, LiGRConfig
from recbrew.baselines.lirank import LiRank, LiRankConfig
from recbrew.baselines.oracle import Oracle
from recbrew.baselines.popularity import DAY, Popularity, PopularityConfig
from recbrew.baselines.quantize import quantize_embeddings, quantize_rows
from recbrew.baselines.scorer import ModelScorer, probabilities
from recbrew.baselines.transact import TransAct
from recbrew.errors import ConfigError, UserError
from recbrew.metrics import expected_calibration_error

torch.set_num_threads(1)
T0 = 1_700_000_000


def fake_rows(rng: np.random.Generator, n: int, tasks=("feed_like", "jobs_apply"), k_max: int = 5) -> list[dict]:
    """Structured rows with every field a ranker reads, random but well-formed."""
    rows = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        k = int(rng.integers(1, k_max + 1))
        h = int(rng.integers(0, 12))
        t = T0 + i * 3600
        rows.append({
            "request_id": f"{task}/train/{i}", "task": task, "kind": "binary", "split_tag": "T1",
            "surface": task.split("_")[0], "member_id": int(rng.integers(0, 60)), "timestamp": t,
            "candidate_ids": rng.choice(300, size=k, replace=False).tolist(),
            "labels": rng.integers(0, 2, size=k).tolist(), "true_probs": rng.random(k).tolist(),
            "member_interactions": h,
            "hist_item_ids": rng.integers(0, 300, size=h).tolist(),
            "hist_actions": rng.choice(["like", "apply", "comment"], size=h).tolist(),
            "hist_surfaces": rng.choice(["feed", "jobs"], size=h).tolist(),
            "hist_timestamps": sorted((t - rng.integers(60, 6 * DAY, size=h)).tolist()),
            **{f: str(rng.choice(["a", "b", "c", None])) for f in MEMBER_FIELDS},
            **{f: rng.choice(["x", "y", "z"], size=k).tolist() for f in ITEM_FIELDS},
        })
    return rows


@pytest.fixture(scope="module")
def space_and_rows():
    rows = fake_rows(np.random.default_rng(0), 40)
    return FeatureSpace.fit(rows, FeatureConfig(history_len=10, item_store=False)), rows


# ----------------------------------------------------------------------------- isotonic calibration

@pytest.mark.parametrize("seed", range(5))
def test_isotonic_calibration_is_monotone_for_any_weights(seed):
    g = torch.Generator().manual_seed(seed)
    cal = IsotonicCalibration(features=3, lo=-4.0, hi=4.0, step=0.37)
    with torch.no_grad():
        cal.weight.copy_(torch.randn(cal.weight.shape, generator=g) * 5)
        cal.offsets.weight.copy_(torch.randn(cal.offsets.weight.shape, generator=g) * 5)
        cal.bias.fill_(float(torch.randn(1, generator=g)) * 3)
    x = torch.linspace(-7, 7, 2001)
    for f in range(3):
        y = cal(x, torch.full_like(x, f, dtype=torch.long))
        assert (y[1:] - y[:-1] >= -1e-5).all()


def test_isotonic_calibration_starts_as_identity_and_learns_jointly():
    cal = IsotonicCalibration(features=2, lo=-8.0, hi=8.0, step=0.5)
    x = torch.linspace(-7.9, 7.9, 101, requires_grad=True)
    y = cal(x, torch.zeros(101, dtype=torch.long))
    torch.testing.assert_close(y, x.detach(), atol=1e-5, rtol=0)
    y.sum().backward()
    assert x.grad is not None and cal.weight.grad.abs().sum() > 0 and cal.offsets.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- 8-bit middle-max

@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (33, 17), (128, 16)])
@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_dequantize_error_at_most_half_a_step(shape, bits):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(shape[0] * bits)) * 3 + 1
    q = quantize_rows(x, bits)
    err = (q.dequantize() - x).abs()
    assert (err <= q.scale / 2 + 1e-6).all()
    half = 2 ** (bits - 1)
    assert q.codes.min() >= -half and q.codes.max() <= half - 1
    if shape[1] > 1:  # row max -> 2^(b-1) - 1, row min -> -2^(b-1): the whole signed range is used
        assert (q.codes.max(1).values == half - 1).all() and (q.codes.min(1).values == -half).all()


def test_middle_max_formula_and_constant_rows():
    x = torch.tensor([[-1.0, 0.0, 2.0], [5.0, 5.0, 5.0]])
    q = quantize_rows(x, 8)
    assert q.scale[0, 0].item() == pytest.approx(3 / 255)
    assert q.mid[0, 0].item() == pytest.approx((2 * 128 + -1 * 127) / 255)
    torch.testing.assert_close(q.dequantize()[1], x[1])  # constant row comes back exactly


def test_quantize_embeddings_in_place_reports_size_ratio():
    table = torch.nn.Embedding(50, 16)
    before = table.weight.detach().clone()
    sizes = quantize_embeddings(torch.nn.ModuleDict({"t": table}), bits=8)
    assert sizes["size_ratio"] == pytest.approx((16 + 8) / (16 * 4))
    q = quantize_rows(before, 8)
    torch.testing.assert_close(table.weight.detach(), q.dequantize())


# ----------------------------------------------------------------------------- cross layers

def test_rdcn_layer_with_identity_attention_is_a_dcnv2_layer():
    torch.manual_seed(0)
    dim, rank, token = 13, 12, 4
    rdcn = AttentionCross(dim, rank, token_dim=token, temperature=0.7)
    dcn = LowRankCross(dim, rank)
    with torch.no_grad():
        dcn.V.weight.copy_(rdcn.value.weight)
        dcn.U.weight.copy_(rdcn.U.weight)
        dcn.U.bias.copy_(torch.randn(dim))
        rdcn.U.bias.copy_(dcn.U.bias)
    x0, xl = torch.randn(9, dim), torch.randn(9, dim)
    eye = torch.eye(rank // token).expand(9, -1, -1)
    torch.testing.assert_close(rdcn(x0, xl, attn=eye), dcn(x0, xl))
    # The learned attention is a proper softmax over the low-rank tokens, and it does change the output.
    a = rdcn.attention(xl)
    torch.testing.assert_close(a.sum(-1), torch.ones(9, rank // token))
    assert not torch.allclose(rdcn(x0, xl), dcn(x0, xl))


def test_dcnv2_layer_formula_and_residual_net_width():
    torch.manual_seed(1)
    layer = LowRankCross(6, 2)
    x0, xl = torch.randn(4, 6), torch.randn(4, 6)
    expected = x0 * (xl @ layer.V.weight.T @ layer.U.weight.T + layer.U.bias) + xl
    torch.testing.assert_close(layer(x0, xl), expected)
    assert ResidualCrossNet(6, 2, 4, token_dim=2)(x0).shape == (4, 12)


def test_dense_gating_multiplies_hidden_by_sigmoid_gate():
    torch.manual_seed(2)
    mlp = GatedMLP(5, [7], gating=True)
    x = torch.randn(3, 5)
    h = torch.relu(mlp.linears[0](x))
    torch.testing.assert_close(mlp(x), h * torch.sigmoid(mlp.gates[0](h)))


# ----------------------------------------------------------------------------- QR and features

def test_qr_pairs_are_unique_per_id_and_tables_compress():
    n, r = 1000, 32
    q, rem = qr_split(torch.arange(n), r)
    assert len(set(zip(q.tolist(), rem.tolist(), strict=True))) == n
    emb = QREmbedding(n, 4, r)
    assert emb.quotient_table.num_embeddings + emb.remainder_table.num_embeddings == qr_rows(n, r) == 64
    idx = torch.tensor([0, 31, 32, 999])
    torch.testing.assert_close(emb(idx), emb.quotient_table(idx // r) + emb.remainder_table(idx % r))


def test_feature_space_compression_ratio(space_and_rows):
    space, _ = space_and_rows
    comp = space.compression()
    item = comp["item"]
    assert item["rows"] == qr_rows(item["ids"], space.remainder["item"]) and item["ratio"] > 1
    full = FeatureSpace(FeatureConfig(qr=False, item_store=False), space.tasks, item_ids=space.item_ids, member_ids=space.member_ids)
    assert full.compression()["total"]["ratio"] == 1


def test_hashing_is_stable_and_missing_maps_to_zero():
    a = stable_hash(["Sales", None, "", "Sales", "Finance"], "member_function", 512)
    assert a[0] == a[3] and a[1] == a[2] == 0 and 1 <= a[0] < 512 and a[0] != a[4]
    assert (stable_hash(["Sales"], "member_function", 512) == a[0]).all()


def test_right_align_keeps_the_latest_steps_at_the_right():
    out = right_align([[1, 2, 3, 4], [], [5]], 3)
    np.testing.assert_array_equal(out, [[2, 3, 4], [0, 0, 0], [0, 0, 5]])


def test_encoding_masks_old_history_and_unknown_ids(space_and_rows):
    space, rows = space_and_rows
    row = dict(rows[0], member_id=10_000, candidate_ids=[10_000, rows[0]["candidate_ids"][0]],
               labels=[0, 1], hist_item_ids=[7, 8], hist_actions=["like", "like"], hist_surfaces=["feed", "feed"],
               hist_timestamps=[rows[0]["timestamp"] - 30 * DAY, rows[0]["timestamp"] - 60],
               **{f: ["x", "y"] for f in ITEM_FIELDS})
    cfg = FeatureConfig(history_len=10, history_days=7, item_store=False)
    enc = FeatureSpace.fit(rows, cfg).encode([row])
    assert enc["member"][0] == 0 and enc["cand_item"][0, 0] == 0 and enc["cand_item"][0, 1] > 0
    np.testing.assert_array_equal(enc["hist_mask"][0, -2:], [False, True])  # 30 days old: out of the window
    assert enc["hist_item"][0, -2] == 0 and enc["hist_action"][0, -2] == 0


# ----------------------------------------------------------------------------- TransAct and LiGR

def test_transact_ignores_padded_history_steps():
    torch.manual_seed(3)
    m = TransAct(token_dim=6, cand_dim=4, dim=8, layers=1, heads=2, last=2).eval()
    tokens, cand = torch.randn(3, 5, 6), torch.randn(3, 4)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    changed = tokens.clone()
    changed[~mask] = 99.0
    torch.testing.assert_close(m(tokens, mask, cand), m(changed, mask, cand))
    assert torch.isfinite(m(tokens, mask, cand)).all()


@pytest.mark.parametrize("setwise", [False, True])
def test_ligr_single_pass_equals_per_candidate_scores_without_setwise(space_and_rows, setwise):
    space, rows = space_and_rows
    torch.manual_seed(4)
    model = LiGR(LiGRConfig(dim=32, heads=4, layers=2, setwise=setwise), space).eval()
    enc = space.encode(rows[:12])
    b = batch_tensors(enc, slice(0, 12))
    with torch.no_grad():
        together = model(b)
        alone = torch.zeros_like(together)
        for j in range(together.shape[1]):
            single = {k: (v[:, j:j + 1] if k.startswith("cand_") or k == "labels" else v) for k, v in b.items()}
            keep = single["cand_mask"][:, 0]
            alone[keep, j] = model({k: v[keep] for k, v in single.items()})[:, 0]
    mask = b["cand_mask"]
    if setwise:
        multi = mask.sum(1) > 1
        assert not torch.allclose(together[multi][mask[multi]], alone[multi][mask[multi]], atol=1e-4)
    else:
        torch.testing.assert_close(together[mask], alone[mask], atol=1e-5, rtol=1e-5)


def test_lirank_forward_shapes_and_padding(space_and_rows):
    space, rows = space_and_rows
    model = LiRank(LiRankConfig(), space).eval()
    b = batch_tensors(space.encode(rows[:8]), slice(0, 8))
    with torch.no_grad():
        logits = model(b)
    assert logits.shape == b["cand_mask"].shape and torch.isfinite(logits).all()
    assert (logits[~b["cand_mask"]] == 0).all()


def test_model_scorer_gives_one_probability_per_candidate(space_and_rows):
    space, rows = space_and_rows
    listwise = dict(rows[1], kind="listwise")
    generative = dict(rows[2], kind="generative", candidate_ids=[], labels=[])
    scorer = ModelScorer("lirank", LiRank(LiRankConfig(), space), space)
    out = scorer.score([rows[0], listwise, generative])
    assert [len(p) for p in out] == [len(rows[0]["candidate_ids"]), len(listwise["candidate_ids"]), 0]
    assert out[1].sum() == pytest.approx(1.0) and ((out[0] > 0) & (out[0] < 1)).all()
    np.testing.assert_allclose(probabilities(np.array([0.0, np.log(3.0)]), True), [0.25, 0.75])


# ----------------------------------------------------------------------------- popularity and oracle

def test_popularity_decays_with_age_and_shrinks_to_the_task_rate():
    rows = [
        {"task": "t", "candidate_ids": [1, 2], "labels": [1, 0], "timestamp": T0, "kind": "binary"},
        {"task": "t", "candidate_ids": [1], "labels": [0], "timestamp": T0 + 7 * DAY, "kind": "binary"},
    ]
    pop = Popularity.fit(rows, PopularityConfig(half_life_days=7, prior=1.0))
    # item 1: positives 0.5 (one half-life old), impressions 0.5 + 1; task rate 0.5 / 2.
    rate_t = 0.5 / 2.0
    expected = (0.5 + rate_t) / (1.5 + 1.0)
    assert pop.item_rates("t", [1])[0] == pytest.approx(expected)
    assert pop.item_rates("t", [99])[0] == pytest.approx(rate_t)  # unseen item: the task's rate
    unseen_task = pop.item_rates("other", [1, 99])  # unseen task: item rate pooled over tasks
    assert unseen_task[0] == pytest.approx(expected) and unseen_task[1] == pytest.approx(pop.state["global_rate"])
    lw = pop.score([{"task": "t", "candidate_ids": [1, 2, 3], "kind": "listwise"}])[0]
    assert lw.sum() == pytest.approx(1.0) and lw[0] > lw[1]


def test_oracle_uses_true_probabilities_and_refuses_rows_without_them():
    rows = [{"request_id": "a", "kind": "binary", "true_probs": [0.2, 0.7]},
            {"request_id": "b", "kind": "listwise", "true_probs": [0.5, 0.5, 0.75]}]
    out = Oracle().score(rows)
    np.testing.assert_allclose(out[0], [0.2, 0.7])
    np.testing.assert_allclose(out[1], [1 / 5, 1 / 5, 3 / 5])  # odds 1 : 1 : 3
    with pytest.raises(UserError, match="true_probs.*synthetic world"):
        Oracle().score([{"request_id": "m/test/0", "kind": "binary", "true_probs": [None, None]}])


def test_ece_of_perfectly_calibrated_bins_is_zero():
    labels = np.array([0, 1, 0, 1, 1, 1, 1, 0])
    probs = np.array([0.5, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75])
    assert expected_calibration_error(labels, probs, bins=10) == pytest.approx(0.0)
    assert expected_calibration_error(labels, np.ones(8), bins=10) == pytest.approx(3 / 8)


# ----------------------------------------------------------------------------- config

def test_config_overrides_and_errors(tmp_path):
    cfg = run_config("lirank", overrides=["train.epochs=3", "model.rdcn=false", "features.qr_remainder=16"])
    assert cfg.train.epochs == 3 and cfg.model.rdcn is False and cfg.features.qr_remainder == 16
    with pytest.raises(ConfigError, match="unknown field.*nope"):
        run_config("lirank", overrides=["model.nope=1"])
    with pytest.raises(ConfigError, match="section.field=value"):
        run_config("ligr", overrides=["epochs=3"])
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        run_config("dcnv2", overrides=["train.epochs=many"])
    bad = tmp_path / "x.yaml"
    bad.write_text("name: ligr\nmodel: {dim: 32}\n")
    with pytest.raises(ConfigError, match="configures 'ligr', not 'lirank'"):
        run_config("lirank", bad)
    assert run_config("ligr", bad).model.dim == 32


# ----------------------------------------------------------------------------- `baselines score` labels

def test_model_labels_default_to_folder_names_and_refuse_clashes(tmp_path):
    from recbrew.cli.baselines import model_labels

    assert model_labels(["runs/a/lirank-s0", "runs/b/lirank-s1/", "oracle", "popularity"]) == {
        "lirank-s0": "runs/a/lirank-s0", "lirank-s1": "runs/b/lirank-s1/", "oracle": "oracle",
        "popularity": "popularity"}
    assert model_labels(["old=runs/a/lirank", "new=runs/b/lirank", "ceiling=oracle"]) == {
        "old": "runs/a/lirank", "new": "runs/b/lirank", "ceiling": "oracle"}
    odd = tmp_path / "lr=0.1"
    odd.mkdir()
    assert model_labels([str(odd)]) == {"lr=0.1": str(odd)}  # an existing folder is never read as NAME=DIR
    for items, message in [
        (["runs/a/lirank", "runs/b/lirank"], "two models are labelled 'lirank' (runs/a/lirank and runs/b/lirank); "
                                             "name them with --model NAME=runs/b/lirank"),
        (["x=runs/a/lirank", "x=oracle"], "two models are labelled 'x'"),
        (["lirank=oracle", "runs/a/lirank"], "two models are labelled 'lirank'"),
        (["=runs/a/lirank"], "write DIR, oracle, popularity or NAME=DIR"),
        (["a="], "write DIR, oracle, popularity or NAME=DIR"),
    ]:
        with pytest.raises(UserError) as err:
            model_labels(items)
        assert message in str(err.value) and "\n" not in str(err.value), items


def test_score_command_labels_columns_by_name(tmp_path, monkeypatch, capsys):
    """Two scorers of one kind get their own columns; a clash exits 2 with one line, before any loading."""
    import json

    import recbrew.baselines.features as features
    import recbrew.baselines.scorer as scorer_module
    from recbrew.cli import main

    rows = fake_rows(np.random.default_rng(1), 12)
    loaded = []
    monkeypatch.setattr(features, "load_rows", lambda examples, split="test", **kw: rows)
    monkeypatch.setattr(scorer_module, "load_scorer", lambda spec, *a, **kw: loaded.append(spec) or Oracle())

    def run(*args):
        with pytest.raises(SystemExit) as done:
            main(["baselines", "score", "--examples", str(tmp_path), *args])
        return done.value.code, capsys.readouterr()

    code, out = run("--model", "runs/a/lirank-s0", "--model", "runs/b/lirank-s1", "--model", "ceiling=oracle")
    assert code == 0, out.err
    header = out.out.splitlines()[0].split()
    assert header == ["task", "tag", "lirank-s0", "lirank-s1", "ceiling"]
    code, out = run("--model", "a-rather-long-model-name=runs/a/lirank", "--model", "oracle", "--json")
    assert code == 0 and [(r["name"], r["spec"], r["scorer"]) for r in json.loads(out.out)] == [
        ("a-rather-long-model-name", "runs/a/lirank", "oracle"), ("oracle", "oracle", "oracle")]
    loaded.clear()
    code, out = run("--model", "runs/a/lirank", "--model", "runs/b/lirank")
    assert code == 2 and out.err.count("\n") == 1 and "two models are labelled 'lirank'" in out.err
    assert loaded == []
