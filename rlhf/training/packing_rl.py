"""Micro-batches of on-policy rows by a token budget: padded to the bin's own longest row, or packed.

Rows are ``[left-padded prompt (P) | right-padded response (R)]`` (rlhf/types.py). With fixed micro-batches
(the default) every micro-batch is padded to the whole batch's P + R, so a micro-batch of short responses
costs as much as one of long ones. With ``algo.max_tokens_per_micro`` rows are sorted by length and binned so
that each micro-batch holds at most that many tokens:

- padded (``algo.pack_sequences=false``): a bin's cost is rows x (its longest prompt + its longest response);
  the rows are cut to that width (left padding of the prompt and right padding of the response dropped);
- packed (``algo.pack_sequences=true``): a bin's real tokens are laid end to end in one [1, L] row with position
  ids restarting at each sequence and attention kept inside each sequence (flash-attn's varlen kernel when the
  model runs flash attention, an explicit block-diagonal causal mask otherwise; rlhf/data/packing.py says
  why both are exact). L is the sum of the bin's real lengths: no padding at all.

Measured on one H200 (Qwen2.5-0.5B shape, bf16, sdpa, checkpointing; 64 rows of 128 prompt + 32..512 response
tokens, forward and backward): fixed micro-batches of 16 rows 0.80 s, a 20480-token budget padded 0.52 s, the
same budget packed 1.21 s. Without flash-attn the packed row's explicit [L, L] mask takes SDPA off its flash
kernel, so on GPUs packing pays only with flash-attn installed; the padded budget is the default choice.

Either way the loss code sees a micro-batch in the padded layout (cut to its own widths), the same masks and
the minibatch's global normalizers (``MiniBatch.norm``), so the summed gradient equals the fixed-micro-batch
one up to float rounding. The ranks of a role agree on one number of micro-batches per pass (one all-reduce
of an integer): ZeRO-2/3 reduce gradients and ZeRO-3 gathers weights in every forward/backward, which every
rank must join.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, List, Optional, Sequence

import torch

# Fields of a rollout row that span the whole sequence (P + R); every other 2-D row field spans the response.
FULL_WIDTH = ("sequences", "attention_mask")


def row_lengths(attention_mask: torch.Tensor, prompt_len: int) -> tuple[list[int], list[int]]:
    """Real prompt and response lengths of each row (the response's from its attention, so rows whose action
    mask was zeroed by dynamic filtering keep their tokens)."""
    am = attention_mask.long()
    return am[:, :prompt_len].sum(-1).tolist(), am[:, prompt_len:].sum(-1).tolist()


def plan_bins(prompt_lens: Sequence[int], resp_lens: Sequence[int], max_tokens: int, packed: bool) -> List[List[int]]:
    """Row indices grouped into micro-batches of at most `max_tokens` tokens, longest rows first.

    Padded: rows sorted by total length descending fill bins in order while rows x (longest prompt + longest
    response) stays within the budget. Packed: first-fit decreasing on the real lengths (Johnson 1973). A row
    longer than the budget gets a bin of its own. Deterministic (ties by row index)."""
    if max_tokens < 1:
        raise ValueError(
            f"algo.max_tokens_per_micro={max_tokens} must be >= 1 (tokens per micro-batch), or null for fixed "
            "micro-batches of plan.micro_batch_per_gpu rows (rlhf/config/algo.py RLConfig)"
        )
    n = len(prompt_lens)
    total = [int(prompt_lens[i]) + int(resp_lens[i]) for i in range(n)]
    order = sorted(range(n), key=lambda i: (-total[i], i))
    bins: List[List[int]] = []
    if packed:
        free: List[int] = []
        for i in order:
            for b, room in enumerate(free):
                if room >= total[i]:
                    bins[b].append(i)
                    free[b] -= total[i]
                    break
            else:
                bins.append([i])
                free.append(max_tokens - total[i])
        return bins
    cur: List[int] = []
    longest_p = longest_r = 0
    for i in order:
        p, r = max(longest_p, int(prompt_lens[i])), max(longest_r, int(resp_lens[i]))
        if cur and (len(cur) + 1) * (p + r) > max_tokens:
            bins.append(cur)
            cur, p, r = [], int(prompt_lens[i]), int(resp_lens[i])
        cur.append(i)
        longest_p, longest_r = p, r
    if cur:
        bins.append(cur)
    return bins


def equalize_bins(bins: List[List[int]], count: int) -> List[List[int]]:
    """`bins` split (the one with most rows first, in halves) until there are `count` of them."""
    out = [list(b) for b in bins]
    rows = sum(len(b) for b in out)
    if count > rows:
        raise ValueError(f"cannot make {count} micro-batches of {rows} rows")
    while len(out) < count:
        k = max(range(len(out)), key=lambda j: (len(out[j]), -j))
        b = out.pop(k)
        half = (len(b) + 1) // 2
        out[k:k] = [b[:half], b[half:]]
    return out


def agreed_count(n: int, device: Any = "cpu") -> int:
    """The largest `n` over the ranks of the default process group (n itself outside one)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return n
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor([n], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _rows_of(batch):
    """The row container of a batch (a MiniBatch's Experience, else the batch itself)."""
    return batch.exp if hasattr(batch, "exp") and hasattr(batch, "norm") else batch


def trim(batch, prompt_width: int, resp_width: int):
    """The batch cut to `prompt_width` prompt and `resp_width` response positions (they must cover every row's
    real tokens: the prompt is left-padded, the response right-padded). Works on RolloutBatch, Experience and
    MiniBatch."""
    rows = _rows_of(batch)
    p = rows.prompt_len
    width = rows.sequences.shape[1]
    out = {}
    for k in rows.ROWS:
        v = getattr(rows, k)
        if not isinstance(v, torch.Tensor) or v.dim() < 2:
            continue
        if k in FULL_WIDTH:
            out[k] = v[:, p - prompt_width : p + resp_width]
        elif v.shape[1] == width - p:
            out[k] = v[:, :resp_width]
    cut = replace(rows, prompt_len=prompt_width, **out)
    return replace(batch, exp=cut) if rows is not batch else cut


@dataclass
class PackedRows:
    """A micro-batch's rows as one packed row.

    input_ids, position_ids [1, L]; seq_lens: each row's real length (prompt + response); keep [M]: the
    positions whose logits predict a response token (M = all response tokens), labels [M] those tokens;
    row [M], col [M]: where each lands in the padded [n, width] layout."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    seq_lens: List[int]
    keep: torch.Tensor
    labels: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    n: int
    width: int

    def to(self, device) -> PackedRows:
        return replace(
            self,
            **{k: getattr(self, k).to(device) for k in ("input_ids", "position_ids", "keep", "labels", "row", "col")},
        )

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """Per-response-token values [M] (or [1, M]) in the padded layout [n, width], 0 elsewhere
        (differentiable)."""
        flat = values.reshape(-1)
        out = torch.zeros(self.n, self.width, dtype=flat.dtype, device=flat.device)
        return out.index_put((self.row, self.col), flat)


def pack_rows(sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> PackedRows:
    """The real tokens of every row end to end (row order kept). Assumes the layout of rlhf/types.py: each row's
    real tokens are contiguous (left-padded prompt, right-padded response)."""
    am = attention_mask.bool()
    plen = am[:, :prompt_len].sum(-1)
    rlen = am[:, prompt_len:].sum(-1)
    lens = plen + rlen
    n = sequences.shape[0]
    flat = sequences[am]  # row-major: row 0's tokens, then row 1's, ...
    offsets = torch.cumsum(lens, 0) - lens
    row = torch.repeat_interleave(torch.arange(n), rlen)
    m = int(rlen.sum())
    col = torch.arange(m) - torch.repeat_interleave(torch.cumsum(rlen, 0) - rlen, rlen)
    keep = offsets[row] + plen[row] - 1 + col
    seq_lens = lens.tolist()
    positions = torch.cat([torch.arange(k) for k in seq_lens]) if seq_lens else torch.zeros(0, dtype=torch.long)
    return PackedRows(
        input_ids=flat[None],
        position_ids=positions[None],
        seq_lens=seq_lens,
        keep=keep,
        labels=flat[keep + 1],
        row=row,
        col=col,
        n=n,
        width=sequences.shape[1] - prompt_len,
    )


def inner_module(model):
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def packed_forward(model, packed: PackedRows, *, keep_logits: bool):
    """The model's forward on a packed row; with `keep_logits` (and a model that takes ``logits_to_keep``) only
    the `packed.keep` positions go through the head. Returns (output, whether out.logits is already cut)."""
    from rlhf.data.packing import block_causal_mask
    from rlhf.training.sequences import accepts_kwarg

    inner = inner_module(model)
    impl = getattr(getattr(inner, "config", None), "_attn_implementation", "sdpa") or "sdpa"
    kw: dict = {"input_ids": packed.input_ids, "position_ids": packed.position_ids, "use_cache": False}
    if "flash" not in impl:
        # Explicit additive block-diagonal causal mask in the compute dtype (a bool mask is wrong for eager).
        dtype = next(inner.parameters()).dtype
        kw["attention_mask"] = block_causal_mask(
            packed.seq_lens, dtype=dtype if dtype.is_floating_point else torch.float32, device=packed.input_ids.device
        )
    cut = keep_logits and accepts_kwarg(model, "logits_to_keep")
    if cut:
        kw["logits_to_keep"] = packed.keep
    return model(**kw), cut


def packed_response_logps(
    model,
    packed: PackedRows,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    head=None,
):
    """`rlhf.training.sequences.response_logps` on a packed micro-batch: log-probs (and entropy) [n, width] in the
    padded layout, 0 on padding, and the router's aux loss if any. `head`: a ``HeadMode`` (the logits path when
    None)."""
    from rlhf.models.ring_attention import get_ring
    from rlhf.training.sequences import LOGITS, head_bypassed, logps_of

    head = head or LOGITS
    ring = get_ring()
    if ring is not None:
        return _ring_response_logps(model, ring, packed, temperature, with_entropy, entropy_grad, head)
    with head_bypassed(model, head) as head_weight:
        out, cut = packed_forward(model, packed, keep_logits=True)
    x = out.logits if cut else out.logits[:, packed.keep]
    lp, ent = logps_of(x, head_weight, packed.labels[None], temperature, head, with_entropy, entropy_grad)
    return packed.scatter(lp), (packed.scatter(ent) if ent is not None else None), getattr(out, "aux_loss", None)


def _ring_response_logps(model, ring, packed: PackedRows, temperature, with_entropy, entropy_grad, head):
    """`packed_response_logps` with the packed row split over the ring (rlhf/models/ring_attention.py): each
    rank's head runs on the response positions of its own chunk, and the values are gathered over the row."""
    from rlhf.models.ring_attention import forward_chunk, split
    from rlhf.training.sequences import accepts_kwarg, head_bypassed, logps_of

    chunk = split(ring, packed.input_ids, position_ids=packed.position_ids, seq_lens=packed.seq_lens)
    mine = (packed.keep >= chunk.start) & (packed.keep < chunk.stop)
    local = packed.keep[mine] - chunk.start
    n = int(local.numel())
    # A chunk without response positions still runs one through the head: its values reach the loss through
    # the gather, so its backward (and the ring's K/V gradient exchange inside it) runs like every other rank's.
    pos = local if n else torch.zeros(1, dtype=torch.long, device=local.device)
    labels = packed.labels[mine] if n else torch.zeros(1, dtype=packed.labels.dtype, device=local.device)
    cut = accepts_kwarg(model, "logits_to_keep")
    with head_bypassed(model, head) as head_weight:
        out = forward_chunk(model, chunk, **({"logits_to_keep": pos} if cut else {}))
    x = out.logits if cut else out.logits[:, pos]
    lp, ent = logps_of(x, head_weight, labels[None], temperature, head, with_entropy, entropy_grad)
    width = chunk.stop - chunk.start

    def whole(values: torch.Tensor) -> torch.Tensor:
        row = torch.zeros(width, dtype=values.dtype, device=values.device).index_put((pos[:n],), values[0, :n])
        return packed.scatter(chunk.gather(row[None])[0, packed.keep])

    return whole(lp), (whole(ent) if ent is not None else None), getattr(out, "aux_loss", None)


def packed_response_values(critic, packed: PackedRows) -> torch.Tensor:
    """`rlhf.training.sequences.response_values` on a packed micro-batch: [n, width] in the padded layout."""
    out, _ = packed_forward(critic, packed, keep_logits=False)
    return packed.scatter(out.logits[0, packed.keep, 0].float())


@dataclass
class Micro:
    """One micro-batch: `rows` (indices into the pass's batch), `batch` (those rows, cut to their own widths
    when `dynamic`, on the device) and `packed` (the packed row, or None for a padded forward)."""

    rows: torch.Tensor
    batch: Any
    packed: Optional[PackedRows] = None
    dynamic: bool = False


def micro_batches(
    batch, *, micro_rows: int, max_tokens: Optional[int], packed: bool, device: Any = "cpu"
) -> List[Micro]:
    """A pass's micro-batches of `batch` (RolloutBatch, Experience or MiniBatch).

    Without a budget and without packing: consecutive chunks of `micro_rows` rows at the batch's width (the
    fixed micro-batches of the plan). Otherwise bins of `plan_bins` (packing without a budget takes
    micro_rows x the batch's width, the padded micro-batch's size), as many on every rank of the role."""
    rows = _rows_of(batch)
    n = len(rows)
    if max_tokens is None and not packed:
        return [
            Micro(torch.arange(i, min(i + micro_rows, n)), mb.to(device))
            for i, mb in zip(range(0, n, max(micro_rows, 1)), batch.chunks(micro_rows))
        ]
    budget = max_tokens if max_tokens is not None else max(micro_rows, 1) * rows.sequences.shape[1]
    plen, rlen = row_lengths(rows.attention_mask, rows.prompt_len)
    bins = plan_bins(plen, rlen, budget, packed)
    bins = equalize_bins(bins, min(agreed_count(len(bins), device), n))
    out = []
    for b in bins:
        idx = torch.tensor(b, dtype=torch.long)
        sel = batch.select(idx) if not hasattr(batch, "norm") else replace(batch, exp=rows.select(idx))
        pw = max(plen[i] for i in b)
        rw = max(max(rlen[i] for i in b), 1)
        sel = trim(sel, max(pw, 1), rw)
        s = _rows_of(sel)
        pk = pack_rows(s.sequences, s.attention_mask, s.prompt_len).to(device) if packed else None
        out.append(Micro(idx, sel.to(device), pk, dynamic=True))
    return out


def scatter_rows(parts: List[torch.Tensor], micros: List[Micro], n: int, width: int) -> torch.Tensor:
    """Per-micro-batch outputs [n_i, w_i] back in the pass's row order and width: [n, width], 0 beyond each
    micro-batch's width."""
    if not micros or not micros[0].dynamic:
        return torch.cat(parts)
    out = torch.zeros(n, width, dtype=parts[0].dtype, device=parts[0].device)
    for part, m in zip(parts, micros):
        out[m.rows.to(out.device), : part.shape[1]] = part
    return out
