"""The typed batches of rlhf/types.py: split/cat round trips, row selection, trimming, minibatches."""

from __future__ import annotations

import pytest
import torch

from rlhf.training.experience import minibatches, per_rank
from rlhf.types import Experience, MiniBatch, PromptBatch, RolloutBatch


def _rollout(n: int = 4, p: int = 2, r: int = 3) -> RolloutBatch:
    seq = torch.arange(n * (p + r)).reshape(n, p + r)
    am = torch.ones(n, r, dtype=torch.long)
    am[1, 2:] = 0  # row 1 has 2 real response tokens
    return RolloutBatch(
        sequences=seq,
        attention_mask=torch.cat([torch.ones(n, p, dtype=torch.long), am], 1),
        action_mask=am,
        rollout_logps=torch.randn(n, r),
        finish_reason=[f"r{i}" for i in range(n)],
        prompt_len=p,
    )


def _experience(n: int = 8, r: int = 3, with_values: bool = True) -> Experience:
    g = torch.Generator().manual_seed(0)
    am = (torch.rand(n, r, generator=g) > 0.3).long()
    return Experience(
        sequences=torch.arange(n * (2 + r)).reshape(n, 2 + r),
        attention_mask=torch.ones(n, 2 + r),
        action_mask=am,
        old_logps=torch.randn(n, r, generator=g),
        advantages=torch.randn(n, r, generator=g),
        returns=torch.randn(n, r, generator=g),
        prompt_len=2,
        kl_coef=0.1,
        ref_logps=None,
        old_values=torch.randn(n, r, generator=g) if with_values else None,
    )


def test_split_then_cat_is_the_identity():
    b = _rollout(n=4)
    shards = b.split(2)
    assert [len(s) for s in shards] == [2, 2]
    # Contiguous shards: rank 1 holds rows 2 and 3, lists split alike, per-batch fields copied.
    assert torch.equal(shards[1].sequences, b.sequences[2:]) and shards[1].finish_reason == ["r2", "r3"]
    assert all(s.prompt_len == 2 for s in shards)
    back = RolloutBatch.cat(shards)
    for k in RolloutBatch.ROWS:
        a, c = getattr(b, k), getattr(back, k)
        assert torch.equal(a, c) if isinstance(a, torch.Tensor) else a == c, k


def test_split_refuses_uneven_shards_and_cat_refuses_mixed_batches():
    with pytest.raises(ValueError, match="4 rows .* into 3"):
        _rollout(n=4).split(3)
    a, b = _rollout(p=2), _rollout(p=2)
    b.prompt_len = 5
    with pytest.raises(ValueError, match="prompt_len"):
        RolloutBatch.cat([a, b])


def test_optional_rows_stay_none_through_split_select_and_cat():
    e = _experience(n=8, with_values=False)
    parts = e.split(4)
    assert all(p.ref_logps is None and p.old_values is None for p in parts)
    assert Experience.cat(parts).old_values is None
    sel = e.select([3, 1])
    assert sel.old_values is None and torch.equal(sel.advantages, e.advantages[[3, 1]]) and sel.kl_coef == 0.1


def test_chunks_cover_every_row_in_order():
    b = _rollout(n=5)
    sizes = [len(c) for c in b.chunks(2)]
    assert sizes == [2, 2, 1]
    assert torch.equal(torch.cat([c.sequences for c in b.chunks(2)]), b.sequences)


def test_trimmed_cuts_the_response_width_to_the_longest_real_response():
    b = _rollout(n=2, p=2, r=4)
    b.action_mask[:, 3] = 0  # no row uses the last response column
    t = b.trimmed()
    assert t.response_width == 3 and t.sequences.shape == (2, 5) and t.rollout_logps.shape == (2, 3)
    assert torch.equal(t.sequences, b.sequences[:, :5])


def test_prompt_batch_left_pads_and_unpads():
    pb = PromptBatch.left_padded([[5, 6, 7], [8]], pad_id=0)
    assert pb.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert pb.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pb.unpadded() == [[5, 6, 7], [8]]


def test_minibatches_normalize_by_the_whole_step_and_shards_keep_it():
    e = _experience(n=8)
    minis = minibatches(e, train_batch_samples=4, update_epochs=2, seed=3)
    # 8 rows / 4 per step x 2 epochs = 4 optimizer steps; each epoch visits every row once.
    assert len(minis) == 4
    for epoch in (minis[:2], minis[2:]):
        rows = sorted(int(s) for m in epoch for s in m.exp.sequences[:, 0])
        assert rows == sorted(int(s) for s in e.sequences[:, 0])
    m = minis[0]
    assert m.norm.num_tokens == float(m.exp.action_mask.sum()) and m.norm.num_seqs == 4.0
    assert m.norm.max_len == 3.0  # the response width when no budget is given
    # Two ranks: each gets a contiguous half of every minibatch with the step's own normalizers.
    shards = per_rank(minis, 2)
    assert [len(s) for s in shards] == [4, 4]
    assert all(
        isinstance(x, MiniBatch) and len(x) == 2 and x.norm == minis[i].norm for r in shards for i, x in enumerate(r)
    )
    assert torch.equal(torch.cat([shards[0][0].exp.advantages, shards[1][0].exp.advantages]), m.exp.advantages)
    with pytest.raises(ValueError, match="train_batch_samples=3"):
        minibatches(e, train_batch_samples=3, update_epochs=1, seed=0)


def test_minibatch_shards_sum_to_the_whole_minibatch_loss():
    """Losses divided by the step's global token count add up over shards and micro-batches to the loss of
    the whole minibatch: the invariance the critic and the policy rely on when their ranks differ."""
    from rlhf.algos.value_loss import value_loss

    e = _experience(n=8)
    m = minibatches(e, train_batch_samples=8, update_epochs=1, seed=0)[0]
    values = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))

    def loss(mb, v):
        return value_loss(
            v,
            mb.exp.old_values,
            mb.exp.returns,
            mb.exp.action_mask.float(),
            clip=0.2,
            agg="token_mean",
            **mb.norm.kwargs(),
        )[0]

    whole = loss(m, values)
    for ranks, micro in ((1, 8), (2, 2), (4, 1)):
        total = torch.tensor(0.0)
        for r, shard in enumerate(m.split(ranks)):
            off = r * len(shard)
            for c, mb in enumerate(shard.chunks(micro)):
                total = total + loss(mb, values[off + c * micro : off + (c + 1) * micro])
        assert torch.allclose(total, whole, atol=1e-6), (ranks, micro)
