"""Token-budget micro-batches and packed rows of on-policy passes: bins by hand, and the invariance that matters:
dynamically batched and packed log-probs, values and gradients equal the padded ones (tiny Qwen2/Llama, fp32)."""

from __future__ import annotations

import pytest
import torch

from rlhf.algos.policy_loss import ppo_policy_loss
from rlhf.training.packing_rl import (
    equalize_bins,
    micro_batches,
    pack_rows,
    packed_response_logps,
    packed_response_values,
    plan_bins,
    row_lengths,
    scatter_rows,
    trim,
)
from rlhf.training.sequences import response_logps, response_values
from rlhf.types import Experience, LossNorm, MiniBatch, RolloutBatch

PAD = 0
VOCAB = 97


# ----------------------------------------------------------------------------------------------------- bins


def test_padded_bins_by_hand():
    # Rows (prompt, response): 0 (2, 5) = 7, 1 (3, 1) = 4, 2 (1, 6) = 7, 3 (2, 2) = 4, 4 (4, 4) = 8.
    # Longest first, ties by index: 4, 0, 2, 1, 3. Budget 16:
    #   [4] 1 x (4 + 4) = 8; + row 0: 2 x (4 + 5) = 18 > 16 -> close. [0] 7; + row 2: 2 x (2 + 6) = 16 -> in;
    #   + row 1: 3 x (3 + 6) = 27 > 16 -> close. [1] 4; + row 3: 2 x (3 + 2) = 10 -> in.
    plen, rlen = [2, 3, 1, 2, 4], [5, 1, 6, 2, 4]
    assert plan_bins(plen, rlen, 16, packed=False) == [[4], [0, 2], [1, 3]]


def test_packed_bins_are_first_fit_decreasing_by_hand():
    # Totals 7, 4, 7, 4, 8 placed as 8 (i4) -> bin0 [free 4]; 7 (i0) -> bin1 [5]; 7 (i2) -> bin2 [5];
    # 4 (i1) -> bin0 [0]; 4 (i3) -> bin1 [1].
    plen, rlen = [2, 3, 1, 2, 4], [5, 1, 6, 2, 4]
    assert plan_bins(plen, rlen, 12, packed=True) == [[4, 1], [0, 3], [2]]


def test_a_row_over_the_budget_gets_its_own_bin_and_a_bad_budget_names_the_key():
    assert plan_bins([3, 1], [9, 1], 4, packed=False) == [[0], [1]]
    assert plan_bins([3, 1], [9, 1], 4, packed=True) == [[0], [1]]
    with pytest.raises(ValueError, match="algo.max_tokens_per_micro=0"):
        plan_bins([1], [1], 0, packed=True)


def test_equalize_splits_the_fullest_bin_until_the_count():
    assert equalize_bins([[0, 1, 2], [3]], 3) == [[0, 1], [2], [3]]
    assert equalize_bins([[0, 1, 2], [3]], 4) == [[0], [1], [2], [3]]
    assert equalize_bins([[0], [1]], 2) == [[0], [1]]
    with pytest.raises(ValueError, match="cannot make 3 micro-batches of 2 rows"):
        equalize_bins([[0, 1]], 3)


# ------------------------------------------------------------------------------------------ rows by hand


def _batch() -> RolloutBatch:
    """P = 3, R = 4: row 0 prompt [5, 6] response [7, 8, 9]; row 1 prompt [4, 5, 6] response [3]."""
    seq = torch.tensor([[PAD, 5, 6, 7, 8, 9, PAD], [4, 5, 6, 3, PAD, PAD, PAD]])
    am = torch.tensor([[0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0]])
    act = am[:, 3:].clone()
    lp = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-4.0, 0.0, 0.0, 0.0]])
    return RolloutBatch(seq, am, act, lp, ["stop", "stop"], prompt_len=3)


def test_row_lengths_and_trim():
    b = _batch()
    assert row_lengths(b.attention_mask, b.prompt_len) == ([2, 3], [3, 1])
    # Row 0 alone needs 2 prompt and 3 response positions.
    t = trim(b.select([0]), 2, 3)
    assert t.prompt_len == 2 and t.sequences.tolist() == [[5, 6, 7, 8, 9]]
    assert t.action_mask.tolist() == [[1, 1, 1]] and t.rollout_logps.tolist() == [[-1.0, -2.0, -3.0]]


def test_pack_rows_by_hand():
    b = _batch()
    p = pack_rows(b.sequences, b.attention_mask, b.prompt_len)
    # Row 0's five real tokens, then row 1's four; positions restart at each row.
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 4, 5, 6, 3]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3]]
    assert p.seq_lens == [5, 4]
    # Response token t of row 0 is predicted at 1 + t (its prompt ends at 1); row 1's at 5 + 3 - 1 = 7.
    assert p.keep.tolist() == [1, 2, 3, 7] and p.labels.tolist() == [7, 8, 9, 3]
    assert p.row.tolist() == [0, 0, 0, 1] and p.col.tolist() == [0, 1, 2, 0]
    assert p.scatter(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]]


# ------------------------------------------------------------------------------------------------ invariance


def _model(arch: str, attn: str, critic: bool = False, tie: bool = False):
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    config = cls(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        num_labels=1,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    auto = AutoModelForTokenClassification if critic else AutoModelForCausalLM
    return auto.from_config(config, attn_implementation=attn).eval()


def _rollout(n: int = 7, p: int = 6, r: int = 9, seed: int = 3) -> Experience:
    """Rows of varied prompt (1..p) and response (1..r) lengths, left/right padded, with advantages."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.full((n, p + r), PAD, dtype=torch.long)
    am = torch.zeros(n, p + r, dtype=torch.long)
    for i in range(n):
        pl = int(torch.randint(1, p + 1, (1,), generator=g))
        rl = int(torch.randint(1, r + 1, (1,), generator=g))
        seq[i, p - pl : p] = torch.randint(1, VOCAB, (pl,), generator=g)
        seq[i, p : p + rl] = torch.randint(1, VOCAB, (rl,), generator=g)
        am[i, p - pl : p + rl] = 1
    act = am[:, p:].clone()
    act[2] = 0  # a row dropped by dynamic filtering: its tokens are still in the forward
    zeros = torch.zeros(n, r)
    return Experience(
        sequences=seq,
        attention_mask=am,
        action_mask=act,
        old_logps=-torch.rand(n, r, generator=g) * act,
        advantages=torch.randn(n, r, generator=g) * act,
        returns=zeros,
        prompt_len=p,
    )


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("arch,attn", [("qwen2", "sdpa"), ("llama", "eager")])
@pytest.mark.parametrize("packed,budget", [(False, 40), (True, 30), (True, None)])
def test_dynamic_and_packed_logps_equal_the_padded_ones(arch, attn, packed, budget):
    model, exp = _model(arch, attn), _rollout()
    mask = exp.attention_mask[:, exp.prompt_len :].float()
    with torch.no_grad():
        ref, _, _ = response_logps(model, exp.sequences, exp.attention_mask, exp.prompt_len, temperature=0.7)
        micros = micro_batches(exp, micro_rows=2, max_tokens=budget, packed=packed)
        parts = []
        for m in micros:
            if packed:
                lp, _, _ = packed_response_logps(model, m.packed, 0.7)
            else:
                b = m.batch
                lp, _, _ = response_logps(model, b.sequences, b.attention_mask, b.prompt_len, 0.7)
            parts.append(lp)
    got = scatter_rows(parts, micros, len(exp), exp.action_mask.shape[1])
    assert sorted(int(i) for m in micros for i in m.rows) == list(range(len(exp)))
    assert len(micros) < len(exp)  # several rows per micro-batch
    assert _max_diff(got * mask, ref * mask) < 1e-5
    if packed:  # a packed forward has no padding: 0 there
        assert (got * (1 - mask)).abs().max().item() == 0.0


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("packed,budget", [(False, 40), (True, 30)])
@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
def test_dynamic_and_packed_gradients_equal_the_padded_one(packed, budget, agg):
    exp = _rollout()
    mask = exp.action_mask.float()
    norm = LossNorm(num_tokens=float(mask.sum()), num_seqs=float(len(exp)), max_len=float(mask.shape[1]))
    kw = dict(clip_low=0.2, clip_high=0.2, agg=agg)

    padded = _model("qwen2", "sdpa")
    lp, _, _ = response_logps(padded, exp.sequences, exp.attention_mask, exp.prompt_len, 0.7)
    loss, _ = ppo_policy_loss(lp, exp.old_logps, exp.advantages, mask, **kw, **norm.kwargs())
    loss.backward()

    model = _model("qwen2", "sdpa")
    total = 0.0
    micros = micro_batches(MiniBatch(exp, norm), micro_rows=2, max_tokens=budget, packed=packed)
    for m in micros:
        e = m.batch.exp
        if packed:
            lp, _, _ = packed_response_logps(model, m.packed, 0.7)
        else:
            lp, _, _ = response_logps(model, e.sequences, e.attention_mask, e.prompt_len, 0.7)
        # Every micro-batch divides by the minibatch's global counts (the norm it carries).
        part, _ = ppo_policy_loss(lp, e.old_logps, e.advantages, e.action_mask.float(), **kw, **m.batch.norm.kwargs())
        part.backward()
        total += float(part.detach())
    assert total == pytest.approx(float(loss), abs=1e-6)
    for a, b in zip(_grads(padded), _grads(model)):
        assert _max_diff(a, b) < 1e-5 * max(1.0, a.abs().max().item())


def test_packed_values_equal_the_padded_ones():
    critic, exp = _model("qwen2", "sdpa", critic=True), _rollout()
    mask = exp.attention_mask[:, exp.prompt_len :].float()
    with torch.no_grad():
        ref = response_values(critic, exp.sequences, exp.attention_mask, exp.prompt_len)
        micros = micro_batches(exp, micro_rows=2, max_tokens=30, packed=True)
        got = scatter_rows([packed_response_values(critic, m.packed) for m in micros], micros, len(exp), mask.shape[1])
    assert _max_diff(got * mask, ref * mask) < 1e-5


def test_fixed_micro_batches_are_the_plan_chunks():
    exp = _rollout()
    micros = micro_batches(exp, micro_rows=3, max_tokens=None, packed=False)
    assert [m.rows.tolist() for m in micros] == [[0, 1, 2], [3, 4, 5], [6]]
    assert not micros[0].dynamic and micros[0].batch.sequences.shape == (3, 15)


def test_logits_to_keep_gives_the_full_forward_logps():
    # The model takes logits_to_keep: only response positions reach the head. Same numbers as slicing the full
    # logits by hand.
    model, exp = _model("qwen2", "sdpa"), _rollout()
    p = exp.prompt_len
    with torch.no_grad():
        got, _, _ = response_logps(model, exp.sequences, exp.attention_mask, p, 1.0)
        from rlhf.training.sequences import position_ids

        logits = model(
            input_ids=exp.sequences, attention_mask=exp.attention_mask, position_ids=position_ids(exp.attention_mask)
        ).logits
        want = torch.log_softmax(logits[:, p - 1 : -1], -1).gather(-1, exp.sequences[:, p:, None])[..., 0]
    assert _max_diff(got, want) < 1e-5
