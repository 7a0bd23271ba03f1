import pytest
import torch

from rlhf.algos.aggregate import AGG_MODES, aggregate_loss

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_modes_hand_values():
    # token_mean: (1 + 2 + 4) / 3 tokens = 7/3
    assert aggregate_loss(LOSS, MASK, "token_mean").item() == pytest.approx(7 / 3)
    # seq_mean_token_mean: row means 1.5 and 4, / 2 rows = 2.75
    assert aggregate_loss(LOSS, MASK, "seq_mean_token_mean").item() == pytest.approx(2.75)
    # seq_mean_token_sum: row sums 3 and 4, / 2 rows = 3.5
    assert aggregate_loss(LOSS, MASK, "seq_mean_token_sum").item() == pytest.approx(3.5)
    # seq_mean_token_sum_norm: (3 / 3 + 4 / 3) / 2 = 7/6 with max_len = T = 3; (3 + 4) / 10 / 2 = 0.35
    assert aggregate_loss(LOSS, MASK, "seq_mean_token_sum_norm").item() == pytest.approx(7 / 6)
    assert aggregate_loss(LOSS, MASK, "seq_mean_token_sum_norm", max_len=10).item() == pytest.approx(0.35)
    # explicit normalizers: 7 / 14 = 0.5; (3 + 4) / 7 = 1
    assert aggregate_loss(LOSS, MASK, "token_mean", num_tokens=14).item() == pytest.approx(0.5)
    assert aggregate_loss(LOSS, MASK.bool(), "seq_mean_token_sum", num_seqs=7).item() == pytest.approx(1.0)


def test_bad_mode_and_shapes():
    with pytest.raises(
        ValueError,
        match=r"unknown loss aggregation mode 'mean'.*algo\.loss_agg.*valid names: "
        r"seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm, token_mean",
    ):
        aggregate_loss(LOSS, MASK, "mean")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        aggregate_loss(LOSS, MASK[:, :2], "token_mean")


LENGTHS = [5, 1, 3, 6, 2, 4]
T = 6


def _batch():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(len(LENGTHS), T, 3, generator=g)
    mask = (torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]).float()
    w = torch.randn(3, generator=g, requires_grad=True)
    return feats, mask, w


def _loss_tok(feats, w):
    # Nonlinear in the parameters, different at every token.
    return torch.tanh(feats @ w) ** 2 + feats[..., 0] * w[1]


def _micro_loss(feats, mask, w, rows, mode, normalizers):
    lo, hi = rows
    own_t = int(mask[lo:hi].sum(-1).max())  # each micro-batch is padded to its own longest response
    return aggregate_loss(_loss_tok(feats[lo:hi, :own_t], w), mask[lo:hi, :own_t], mode, **normalizers)


def _global_normalizers(mask):
    return dict(num_tokens=mask.sum(), num_seqs=mask.shape[0], max_len=T)


@pytest.mark.parametrize("mode", sorted(AGG_MODES))
@pytest.mark.parametrize("split", [[(0, 3), (3, 6)], [(0, 1), (1, 4), (4, 6)]])
def test_micro_batches_with_global_normalizers_sum_to_full_batch(mode, split):
    feats, mask, w = _batch()
    full = aggregate_loss(_loss_tok(feats, w), mask, mode)
    (full_grad,) = torch.autograd.grad(full, w)
    total = sum(_micro_loss(feats, mask, w, rows, mode, _global_normalizers(mask)) for rows in split)
    (grad,) = torch.autograd.grad(total, w)
    torch.testing.assert_close(total, full)
    assert torch.allclose(grad, full_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", sorted(AGG_MODES))
def test_data_parallel_ranks_with_global_normalizers_give_full_gradient(mode):
    feats, mask, w = _batch()
    (full_grad,) = torch.autograd.grad(aggregate_loss(_loss_tok(feats, w), mask, mode), w)
    ranks = [[(0, 2), (2, 3)], [(3, 4), (4, 6)]]  # 2 ranks x 2 micro-batches of unequal sizes
    world = len(ranks)
    rank_grads = []
    for micro_batches in ranks:
        rank_loss = sum(_micro_loss(feats, mask, w, rows, mode, _global_normalizers(mask)) for rows in micro_batches)
        # DDP / DeepSpeed average gradients over ranks: scale by the world size to keep the sum.
        rank_grads.append(torch.autograd.grad(world * rank_loss, w)[0])
    averaged = torch.stack(rank_grads).mean(0)  # the all-reduce
    assert torch.allclose(averaged, full_grad, rtol=1e-5, atol=1e-6)


def test_local_normalizers_do_not_give_full_batch_loss():
    # The invariance above is not automatic: a mean of micro-batch token means over-weights short batches.
    feats, mask, w = _batch()
    full = aggregate_loss(_loss_tok(feats, w), mask, "token_mean")
    split = [(0, 1), (1, 4), (4, 6)]
    local_mean = sum(_micro_loss(feats, mask, w, rows, "token_mean", {}) for rows in split) / len(split)
    assert not torch.allclose(local_mean, full, rtol=1e-3)
