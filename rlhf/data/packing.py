"""Sample packing: several samples in one [1, L] row, each attending only to itself.

A packed forward gives the same per-token log-probs as one forward per sample when (1) position ids restart at
0 at each sample and (2) attention is block-diagonal causal. How to get (2) from an HF causal LM (checked on
transformers 5.24, Llama and Qwen2, in tests/unit/data/test_packing.py):

- "sdpa" / "eager": pass an explicit 4-D additive float mask [1, 1, L, L] (0 where allowed, the dtype's min
  elsewhere). A 4-D mask is used as given (`masking_utils` returns it unchanged). A *bool* 4-D mask is right
  for sdpa but silently wrong for eager, which adds the mask to the scores; so the mask is always float.
  Reset position ids alone are not enough: transformers infers packing from them only when no cache is
  built, and a forward with the default `use_cache=True` lets samples attend to each other.
- "flash_attention_2" (and other flash kernels): position ids only; the varlen kernel is chosen from them.

Not handled: sliding-window attention (the explicit mask has no window; keep packed rows within the window).
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, List, Optional, Sequence

import torch

from rlhf.data.errors import DataError

PACKABLE_TASKS = ("sft", "pretrain", "pair", "unpaired", "prm")
# Per-token keys carried into a packed row when the samples have them.
_TOKEN_KEYS = ("loss_mask", "step_mask", "step_labels")


def pack_samples(lengths: Sequence[int], max_len: int) -> List[List[int]]:
    """Group sample indices into bins of at most `max_len` tokens, first-fit decreasing (Johnson 1973).

    Deterministic: samples are placed longest first (ties by index), each into the first bin it fits; bins are
    returned in creation order, each listing its samples in placement order. O(n log n) with a max-tree over
    the bins' free space.
    """
    for i, n in enumerate(lengths):
        if n > max_len:
            raise DataError(
                f"sample {i} has {n} tokens, more than the packing length {max_len}",
                key="data.max_len",
                hint="truncate samples to data.max_len before packing (build_dataset does)",
            )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    # tree[1] is the root; leaves tree[size + b] hold the free space of bin b (max_len for unopened bins).
    tree = [max_len] * (2 * size)
    bins: List[List[int]] = []
    for i in order:
        need = lengths[i]
        node = 1
        while node < size:
            node = 2 * node if tree[2 * node] >= need else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        tree[node] -= need
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return bins


def _sequences(samples: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The token sequences of samples: one per SFT-like sample; for pairs all chosen, then all rejected."""
    if samples and "chosen_ids" in samples[0]:
        return [{"input_ids": s["chosen_ids"], "loss_mask": s["chosen_mask"]} for s in samples] + [
            {"input_ids": s["rejected_ids"], "loss_mask": s["rejected_mask"]} for s in samples
        ]
    return list(samples)


def collate_packed(samples: Sequence[Dict[str, Any]], max_len: int) -> Dict[str, Any]:
    """One packed row of `samples` (a bin of `pack_samples`).

    Returns input_ids [1, L] (L = total tokens <= max_len), position_ids [1, L] restarting at 0 at each sequence,
    the per-token masks the samples carry ("loss_mask", 0 at each sequence's first token, and
    "step_mask"/"step_labels" for PRM) as [1, L], and
    "seq_lens" (list of ints). Pair samples give 2 sequences each: the B chosen first, then the B rejected,
    as in `collate_pairs`. KTO samples add "labels" [B] bool.
    """
    sequences = _sequences(samples)
    seq_lens = [len(s["input_ids"]) for s in sequences]
    if sum(seq_lens) > max_len:
        raise DataError(
            f"{len(samples)} samples hold {sum(seq_lens)} tokens, more than the packing length {max_len}",
            key="data.max_len",
            hint="group samples with pack_samples(lengths, max_len) first",
        )
    batch: Dict[str, Any] = {
        "input_ids": torch.tensor([[t for s in sequences for t in s["input_ids"]]], dtype=torch.long),
        "position_ids": position_ids_for(seq_lens),
        "seq_lens": seq_lens,
    }
    for key in _TOKEN_KEYS:
        if sequences and key in sequences[0]:
            dtype = torch.float32 if key == "step_labels" else torch.long
            batch[key] = torch.tensor([[v for s in sequences for v in s[key]]], dtype=dtype)
    if "loss_mask" in batch:
        # A sequence's first token is no target: in a packed row its prediction would come from the previous
        # sequence (pretraining samples train every token, the first one included).
        starts = torch.tensor([0] + list(itertools.accumulate(seq_lens))[:-1], dtype=torch.long)
        batch["loss_mask"][0, starts[torch.tensor(seq_lens) > 0]] = 0
    if samples and "label" in samples[0]:
        batch["labels"] = torch.tensor([bool(s["label"]) for s in samples], dtype=torch.bool)
    return batch


def position_ids_for(seq_lens: Sequence[int], total_len: Optional[int] = None) -> torch.Tensor:
    """[1, total_len] positions restarting at 0 at each sequence; a padding tail counts as one more sequence."""
    spans = list(seq_lens) + _tail(seq_lens, total_len)
    return torch.cat([torch.arange(n) for n in spans] or [torch.zeros(0, dtype=torch.long)])[None]


def block_causal_mask(
    seq_lens: Sequence[int], total_len: Optional[int] = None, dtype: torch.dtype = torch.float32, device=None
) -> torch.Tensor:
    """[1, 1, L, L] additive mask: 0 where query i may attend key j (same sequence, j <= i), dtype-min elsewhere.

    A padding tail (total_len > sum(seq_lens)) is one more causal block, so no row is fully masked (no NaN).
    """
    spans = list(seq_lens) + _tail(seq_lens, total_len)
    segment = torch.repeat_interleave(torch.arange(len(spans), device=device), torch.tensor(spans, device=device))
    length = segment.numel()
    index = torch.arange(length, device=device)
    allowed = (segment[:, None] == segment[None, :]) & (index[:, None] >= index[None, :])
    mask = torch.zeros(length, length, dtype=dtype, device=device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


def packed_attention_kwargs(
    seq_lens: Sequence[int],
    total_len: int,
    attn_implementation: str,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Dict[str, torch.Tensor]:
    """Keyword arguments for an HF causal LM forward on a packed [1, total_len] row (module docstring says why).

    "sdpa"/"eager": {"attention_mask": [1, 1, L, L] float `dtype` (the model's compute dtype; L*L elements,
    128 MiB in bf16 at L = 8192), "position_ids": [1, L]}; flash attention kernels: {"position_ids": [1, L]}.
    """
    if not seq_lens or sum(seq_lens) > total_len:
        raise ValueError(f"seq_lens {list(seq_lens)} do not fit a packed row of {total_len} tokens")
    positions = position_ids_for(seq_lens, total_len)
    if device is not None:
        positions = positions.to(device)
    if "flash" in attn_implementation or attn_implementation == "rlhf_ring":
        # Ring attention (rlhf/models/ring_attention.py) builds its own mask for its chunk from the sample lengths.
        return {"position_ids": positions}
    if attn_implementation in ("sdpa", "eager"):
        if not dtype.is_floating_point:
            raise ValueError(f"the mask dtype must be the model's float dtype, got {dtype}")
        return {
            "attention_mask": block_causal_mask(seq_lens, total_len, dtype=dtype, device=device),
            "position_ids": positions,
        }
    raise DataError(
        f"packing does not support attn_implementation {attn_implementation!r}",
        key="model.attn_implementation",
        hint="use sdpa, eager or flash_attention_2, or set data.packing=false",
    )


def split_packed(values: torch.Tensor, seq_lens: Sequence[int]) -> List[torch.Tensor]:
    """Per-token values of a packed row ([1, L] or [L], L >= sum(seq_lens)) as one tensor per sequence."""
    flat = values.reshape(-1) if values.dim() == 1 or values.shape[0] == 1 else None
    if flat is None:
        raise ValueError(f"expected a packed row [1, L] or [L], got shape {tuple(values.shape)}")
    out, start = [], 0
    for n in seq_lens:
        out.append(flat[start : start + n])
        start += n
    return out


def unpack_logprobs(logprobs: torch.Tensor, seq_lens: Sequence[int]) -> List[torch.Tensor]:
    """Per-sequence token log-probs from a packed row.

    `logprobs` [1, L]: entry t is log p(input_ids[t] | tokens before t). At a sequence's first token that
    context is the previous sequence, so it is dropped: sequence i gives a tensor [seq_lens[i] - 1], the
    log-probs of its tokens 1..n-1, equal to those of the sequence run alone.
    """
    return [part[1:] for part in split_packed(logprobs, seq_lens)]


def _tail(seq_lens: Sequence[int], total_len: Optional[int]) -> List[int]:
    pad = 0 if total_len is None else total_len - sum(seq_lens)
    if pad < 0:
        raise ValueError(f"seq_lens sum to {sum(seq_lens)}, more than total_len {total_len}")
    return [pad] if pad else []
