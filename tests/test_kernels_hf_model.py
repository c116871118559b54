"""A Hugging Face Llama with ``multi_item=`` gives the same hidden states and the same packed-training
gradients through the Triton kernels (interpreted on CPU) as through the torch path."""

from __future__ import annotations

import pytest
import torch
from random_llama import small_llama

from recbrew.kernels.answer_head import answer_head
from recbrew.kernels.dispatch import INTERPRETED, kernel_backend
from recbrew.kernels.hf_attention import ATTN_NAME
from recbrew.scoring.hf import multi_item_positions

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not (CUDA or INTERPRETED), reason="needs CUDA or TRITON_INTERPRET=1")

PREFIX, SEGMENTS, LABELS = 13, [4, 7, 1, 5], [5, 9]


@pytest.fixture(scope="module")
def model():
    model = small_llama(131, positions=128).to("cuda" if CUDA else "cpu")
    assert model.config._attn_implementation == ATTN_NAME
    return model


def _batch(model, batch=2):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, model.config.vocab_size, (batch, PREFIX + sum(SEGMENTS)), generator=gen)
    positions, ends = multi_item_positions(PREFIX, SEGMENTS)
    dev = model.device
    return ids.to(dev), positions.expand(batch, -1).to(dev), ends.to(dev)


def test_scoring_hidden_states_match(model):
    ids, positions, _ = _batch(model)
    states = {}
    for backend in ("torch", "triton"):
        with torch.no_grad(), kernel_backend(backend):
            states[backend] = model.model(input_ids=ids, position_ids=positions,
                                          multi_item=(PREFIX, SEGMENTS)).last_hidden_state
    torch.testing.assert_close(states["triton"], states["torch"], atol=2e-5, rtol=2e-5)
    # Each candidate's states equal a plain causal pass over the prefix and that candidate alone.
    start = PREFIX
    for n in SEGMENTS:
        alone = torch.cat([ids[:, :PREFIX], ids[:, start:start + n]], 1)
        with torch.no_grad():
            single = model.model(input_ids=alone).last_hidden_state
        torch.testing.assert_close(states["triton"][:, start:start + n], single[:, PREFIX:], atol=2e-5, rtol=2e-5)
        start += n
    # Without multi_item the registered function is plain causal SDPA: candidates then see each other.
    with torch.no_grad():
        causal = model.model(input_ids=ids, position_ids=positions).last_hidden_state
    assert (causal[:, PREFIX + SEGMENTS[0]:] - states["torch"][:, PREFIX + SEGMENTS[0]:]).abs().max() > 1e-3


def test_packed_training_gradients_match(model):
    """K labels in one packed sequence: loss on the answer positions, backward through both kernels."""
    ids, positions, ends = _batch(model, batch=1)
    targets = torch.tensor([0, 1, 1, 0], device=model.device)
    grads, losses = {}, {}
    for backend in ("torch", "triton"):
        model.zero_grad()
        with kernel_backend(backend):
            hidden = model.model(input_ids=ids, position_ids=positions,
                                 multi_item=(PREFIX, SEGMENTS)).last_hidden_state
            out = answer_head(hidden, ends, model.lm_head.weight, LABELS, full_vocab=True, vocab_chunk=50)
            loss = torch.nn.functional.nll_loss(out.logprobs, targets) - out.full_logprobs.mean()
            loss.backward()
        losses[backend] = loss.item()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert losses["triton"] == pytest.approx(losses["torch"], abs=1e-5)
    for name, grad in grads["torch"].items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grads["triton"][name], grad, atol=2e-5, rtol=2e-5, msg=name)
