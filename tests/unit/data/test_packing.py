"""Packing: first-fit-decreasing bins, packed rows, and the invariance that matters: a packed forward gives the
same per-token log-probs as one forward per sample (random-init Llama and Qwen2, sdpa and eager attention).
"""

from __future__ import annotations

import pytest
import torch

from rlhf.data.errors import DataError
from rlhf.data.packing import (
    block_causal_mask,
    collate_packed,
    pack_samples,
    packed_attention_kwargs,
    position_ids_for,
    unpack_logprobs,
)
from rlhf.data.templates import TemplateArgs, tokenize_sft

VOCAB = 300
LENGTHS = (7, 12, 4)


# -------------------------------------------------------------------------------------------------- bins


def test_first_fit_decreasing_by_hand():
    # Placed longest first: 8 (i2) -> bin0 [free 2]; 6 (i5) -> bin1 [4]; 5 (i0) -> bin2 [5];
    # 4 (i4) -> bin1 [0]; 3 (i1) -> bin2 [2]; 2 (i3) -> bin0 [0].
    assert pack_samples([5, 3, 8, 2, 4, 6], 10) == [[2, 3], [5, 4], [0, 1]]


def test_bins_hold_every_sample_once_within_the_length():
    lengths = [(i * 37) % 23 + 1 for i in range(200)]
    bins = pack_samples(lengths, 32)
    assert sorted(i for b in bins for i in b) == list(range(200))
    assert all(sum(lengths[i] for i in b) <= 32 for b in bins)
    # FFD is within 11/9 OPT + 1 (Dosa 2007); the size bound sum/32 is a lower bound of OPT.
    assert len(bins) <= 11 / 9 * (sum(lengths) / 32) + 2
    assert bins == pack_samples(lengths, 32)
    assert pack_samples([], 8) == []


def test_a_sample_longer_than_the_row_is_refused():
    with pytest.raises(DataError, match="sample 1 has 9 tokens"):
        pack_samples([3, 9], 8)


# ------------------------------------------------------------------------------------------------ packed rows


def test_collate_packed_resets_positions_and_concatenates_masks():
    samples = [{"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]}, {"input_ids": [8, 9], "loss_mask": [0, 1]}]
    batch = collate_packed(samples, max_len=8)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 0, 1]]
    assert batch["seq_lens"] == [3, 2]
    # Pretraining samples train every token; packed, a sample's first token is not predicted from the previous one.
    pretrain = [{"input_ids": [5, 6], "loss_mask": [1, 1]}, {"input_ids": [7, 8], "loss_mask": [1, 1]}]
    pretrain = collate_packed(pretrain, max_len=8)
    assert pretrain["loss_mask"].tolist() == [[0, 1, 0, 1]]
    with pytest.raises(DataError, match="more than the packing length 4"):
        collate_packed(samples, max_len=4)


def test_collate_packed_pairs_put_chosen_first():
    samples = [
        {"chosen_ids": [1, 2], "chosen_mask": [0, 1], "rejected_ids": [1, 3, 3], "rejected_mask": [0, 1, 1]},
        {"chosen_ids": [4, 5], "chosen_mask": [0, 1], "rejected_ids": [4, 6], "rejected_mask": [0, 1]},
    ]
    batch = collate_packed(samples, max_len=16)
    assert batch["input_ids"].tolist() == [[1, 2, 4, 5, 1, 3, 3, 4, 6]]
    assert batch["seq_lens"] == [2, 2, 3, 2]


def test_block_causal_mask_by_hand():
    # Sequences of 2 and 1 tokens plus 1 padding token: blocks {0,1}, {2}, {3}, causal inside.
    allowed = block_causal_mask([2, 1], total_len=4)[0, 0] == 0
    assert allowed.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [False, False, True, False],
        [False, False, False, True],
    ]
    assert block_causal_mask([2], dtype=torch.bfloat16).dtype == torch.bfloat16
    assert block_causal_mask([2])[0, 0, 0, 1].item() == torch.finfo(torch.float32).min
    assert position_ids_for([2, 1], total_len=4).tolist() == [[0, 1, 0, 0]]


def test_attention_kwargs_per_implementation():
    flash = packed_attention_kwargs([3, 2], 5, "flash_attention_2")
    assert set(flash) == {"position_ids"} and flash["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    sdpa = packed_attention_kwargs([3, 2], 5, "sdpa", torch.bfloat16)
    assert sdpa["attention_mask"].shape == (1, 1, 5, 5) and sdpa["attention_mask"].dtype == torch.bfloat16
    with pytest.raises(DataError, match="flex_attention"):
        packed_attention_kwargs([3, 2], 5, "flex_attention")


# ------------------------------------------------------------------------------------------------ invariance


def _model(arch: str, attn: str):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    config = config_cls(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


@pytest.fixture(scope="module")
def models():
    return {(arch, attn): _model(arch, attn) for arch in ("llama", "qwen2") for attn in ("sdpa", "eager")}


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[1, L]: entry t = log p(ids[t] | ids[<t]); entry 0 has no context and is 0."""
    logp = torch.log_softmax(logits.float(), dim=-1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    return torch.cat([torch.zeros_like(logp[:, :1]), logp], dim=1)


def _samples(lengths=LENGTHS):
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def _unpacked(model, sequences):
    with torch.no_grad():
        out = []
        for seq in sequences:
            ids = torch.tensor([seq])
            out.append(token_logprobs(model(input_ids=ids).logits, ids)[0, 1:])
        return out


def _packed(model, sequences, total_len=None, **forward_kwargs):
    seq_lens = [len(s) for s in sequences]
    flat = [t for s in sequences for t in s]
    total_len = total_len or len(flat)
    ids = torch.tensor([flat + [0] * (total_len - len(flat))])
    with torch.no_grad():
        logits = model(input_ids=ids, **forward_kwargs).logits
    return unpack_logprobs(token_logprobs(logits, ids), seq_lens)


def _max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_forward_equals_per_sample_forward(models, arch, attn):
    model, sequences = models[(arch, attn)], _samples()
    reference = _unpacked(model, sequences)
    seq_lens = [len(s) for s in sequences]
    kwargs = packed_attention_kwargs(seq_lens, sum(seq_lens), attn, torch.float32)
    packed = _packed(model, sequences, **kwargs)
    assert [p.shape[0] for p in packed] == [n - 1 for n in LENGTHS]
    assert _max_diff(packed, reference) < 1e-5
    # A padding tail after the samples changes nothing for them.
    padded = _packed(
        model,
        sequences,
        total_len=sum(seq_lens) + 5,
        **packed_attention_kwargs(seq_lens, sum(seq_lens) + 5, attn, torch.float32),
    )
    assert _max_diff(padded, reference) < 1e-5


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_forward_without_the_mask_differs(models, arch, attn):
    # Without a mask (and plain positions) later samples attend to earlier ones: the check above can fail.
    model, sequences = models[(arch, attn)], _samples()
    reference = _unpacked(model, sequences)
    unmasked = _packed(model, sequences)
    assert (unmasked[0] - reference[0]).abs().max().item() < 1e-5  # the first sample sees nothing before it
    assert (unmasked[1] - reference[1]).abs().max().item() > 1e-3
    assert (unmasked[2] - reference[2]).abs().max().item() > 1e-3


def test_bool_mask_is_silently_wrong_with_eager(models):
    # Eager attention adds the mask to the scores, so True/False become +1/+0 instead of allow/forbid.
    model, sequences = models[("llama", "eager")], _samples()
    seq_lens = [len(s) for s in sequences]
    kwargs = packed_attention_kwargs(seq_lens, sum(seq_lens), "eager", torch.float32)
    kwargs["attention_mask"] = kwargs["attention_mask"] == 0
    assert _max_diff(_packed(model, sequences, **kwargs), _unpacked(model, sequences)) > 1e-3


def test_packed_sft_batch_end_to_end(models, chat_tokenizer):
    """Tokenized samples -> bins -> packed rows -> forward: the response log-probs match per-sample forwards."""
    model = models[("qwen2", "sdpa")]
    rows = [("What is 1 plus 2?", "The answer is 3."), ("hello", "hello world"), ("What is 7 plus 7?", "14")]
    samples = [tokenize_sft(p, r, chat_tokenizer, TemplateArgs()) for p, r in rows]
    max_len = max(len(s["input_ids"]) for s in samples) + 12
    for group in pack_samples([len(s["input_ids"]) for s in samples], max_len):
        batch = collate_packed([samples[i] for i in group], max_len)
        kwargs = packed_attention_kwargs(batch["seq_lens"], batch["input_ids"].shape[1], "sdpa", torch.float32)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], **kwargs).logits
        packed = unpack_logprobs(token_logprobs(logits, batch["input_ids"]), batch["seq_lens"])
        reference = _unpacked(model, [samples[i]["input_ids"] for i in group])
        assert _max_diff(packed, reference) < 1e-5
        masks = unpack_logprobs(batch["loss_mask"], batch["seq_lens"])
        assert [int(m.sum()) for m in masks] == [sum(samples[i]["loss_mask"]) for i in group]
