import math

import pytest
import torch

from rlhf.algos.logprobs import (
    entropy_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    row_chunks,
    token_logprobs,
)


def _reference(logits, labels, temperature=1.0):
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g) * 3
    labels = torch.randint(0, 50, (3, 7), generator=g)
    return logits, labels


@pytest.mark.parametrize("chunk_rows", [None, 1, 3, 7, 10, 21, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equals_log_softmax_gather_exactly(data, chunk_rows, temperature):
    logits, labels = data
    out = token_logprobs(logits, labels, temperature=temperature, chunk_rows=chunk_rows)
    assert out.dtype == torch.float32
    assert torch.equal(out, _reference(logits, labels, temperature))


def test_token_logprobs_on_a_non_contiguous_slice(data):
    logits, labels = data
    sliced = logits[:, :-1]  # what slicing off the last position of causal-LM logits gives
    assert not sliced.is_contiguous()
    assert torch.equal(token_logprobs(sliced, labels[:, :-1], chunk_rows=4), _reference(logits, labels)[:, :-1])


def test_token_logprobs_hand_value():
    # logits [0, ln 3] -> p = [1/4, 3/4]; log p(label=1) = ln 0.75 = -0.287682
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(-0.287682, abs=1e-6)
    # temperature 2 halves the logits: [0, ln 3 / 2] -> p(1) = sqrt3 / (1 + sqrt3) = 0.633975
    out = token_logprobs(logits, torch.tensor([[1]]), temperature=2.0)
    assert out.item() == pytest.approx(math.log(0.633975), abs=1e-6)


@pytest.mark.parametrize("chunk_rows", [1, 4, None])
def test_token_logprobs_gradient_matches_autograd(data, chunk_rows):
    logits, labels = data
    weight = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    a = logits.clone().requires_grad_()
    (token_logprobs(a, labels, temperature=0.7, chunk_rows=chunk_rows) * weight).sum().backward()
    b = logits.clone().requires_grad_()
    (_reference(b, labels, 0.7) * weight).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_token_logprobs_and_entropy_gradcheck():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (2, 3), generator=g)
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, labels, 0.7, chunk_rows=2), (logits,))
    assert torch.autograd.gradcheck(lambda x: entropy_from_logits(x, 1.3, chunk_rows=4), (logits,))


def test_token_logprobs_bf16(data):
    logits, labels = data
    low = logits.to(torch.bfloat16)
    out = token_logprobs(low, labels, chunk_rows=5)
    # Each chunk is upcast before the log-softmax: exactly the fp32 result of the rounded logits...
    assert out.dtype == torch.float32
    assert torch.equal(out, _reference(low.float(), labels))
    # ...and close to the fp32 logits' result (bf16 keeps 8 bits: |logit| < 12 rounds by < 0.04 per logit).
    torch.testing.assert_close(out, _reference(logits, labels), rtol=0, atol=0.1)
    a = low.clone().requires_grad_()
    token_logprobs(a, labels, chunk_rows=5).sum().backward()
    assert a.grad.dtype == torch.bfloat16
    b = low.float().requires_grad_()
    _reference(b, labels).sum().backward()
    torch.testing.assert_close(a.grad.float(), b.grad, rtol=1e-2, atol=1e-2)


def test_token_logprobs_errors(data):
    logits, labels = data
    with pytest.raises(ValueError, match="labels"):
        token_logprobs(logits, labels[:, :3])
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        token_logprobs(logits[0], labels[0])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, labels, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_rows"):
        token_logprobs(logits, labels, chunk_rows=0)


def test_row_chunks_cover_the_grid_once():
    for batch, time, rows in [(3, 7, 1), (3, 7, 4), (3, 7, 7), (3, 7, 15), (3, 7, 100), (1, 1, 1)]:
        seen = torch.zeros(batch, time, dtype=torch.int64)
        for bs, ts in row_chunks(batch, time, rows):
            assert seen[bs, ts].numel() <= rows
            seen[bs, ts] += 1
        assert torch.equal(seen, torch.ones_like(seen))


def test_entropy_hand_values():
    # p = [1/4, 3/4]: H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335
    # uniform over 4: H = ln 4 = 1.386294
    logits = torch.tensor([[[0.0, math.log(3.0), -math.inf, -math.inf], [0.0, 0.0, 0.0, 0.0]]])
    ent = entropy_from_logits(logits[..., :2].contiguous(), chunk_rows=1)
    assert ent[0, 0].item() == pytest.approx(0.562335, abs=1e-6)
    assert ent[0, 1].item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert entropy_from_logits(logits[:, 1:]).item() == pytest.approx(1.386294, abs=1e-6)


def test_entropy_matches_reference_and_gradient(data):
    logits, _ = data
    a = logits.clone().requires_grad_()
    ent = entropy_from_logits(a, temperature=0.8, chunk_rows=3)
    b = logits.clone().requires_grad_()
    p = torch.softmax(b / 0.8, -1)
    ref = -(p * torch.log_softmax(b / 0.8, -1)).sum(-1)
    torch.testing.assert_close(ent, ref, rtol=1e-5, atol=1e-5)
    ent.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)


def test_masked_reductions_hand_values():
    # masked elements: 1, 2, 4 -> sum 7, mean 7/3
    assert masked_sum(X, M).item() == pytest.approx(7.0)
    assert masked_mean(X, M).item() == pytest.approx(7 / 3)
    # per row: (1 + 2) / 2 = 1.5 and 4 / 1 = 4
    torch.testing.assert_close(masked_mean(X, M, dim=-1), torch.tensor([1.5, 4.0]))
    torch.testing.assert_close(masked_sum(X, M, dim=-1), torch.tensor([3.0, 4.0]))
    # deviations from 7/3: -4/3, -1/3, 5/3; squares sum 16/9 + 1/9 + 25/9 = 42/9
    # unbiased: (42/9) / 2 = 7/3; population: (42/9) / 3 = 14/9
    assert masked_var(X, M).item() == pytest.approx(7 / 3)
    assert masked_var(X, M, unbiased=False).item() == pytest.approx(14 / 9)


def test_masked_reductions_with_empty_mask_give_zero_not_nan():
    empty = torch.zeros_like(M)
    assert masked_mean(X, empty).item() == 0.0
    assert masked_var(X, empty).item() == 0.0
    assert masked_var(X[:, :1], torch.tensor([[True], [False]])).item() == 0.0  # one element


def test_masked_whiten():
    out = masked_whiten(X, M)
    # (x - 7/3) / sqrt(7/3) at masked positions: -0.872872, -0.218218, 1.091089; 0 elsewhere
    expected = torch.tensor([[-0.872872, -0.218218, 0.0], [1.091089, 0.0, 0.0]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    kept = masked_whiten(X, M, shift_mean=False)
    torch.testing.assert_close(kept, (expected + 7 / 3) * M, rtol=0, atol=1e-5)


def test_entropy_with_minus_inf_logits_is_finite():
    # A banned token (-inf logit) has p = 0 and adds nothing: H of [1/4, 3/4, 0] = 0.562335, gradient finite.
    logits = torch.tensor([[[0.0, math.log(3.0), -math.inf]]], requires_grad=True)
    ent = entropy_from_logits(logits)
    assert ent.item() == pytest.approx(0.562335, abs=1e-6)
    ent.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0, 2].item() == 0.0
