"""Ring attention (sequence parallelism): one row's tokens split over the ranks of a ring group.

``model.ring_attn_size=N`` groups the ranks of a trained role into rings of N consecutive ranks (ranks
0..N-1, N..2N-1, ...). The ranks of one ring see the same samples (data-parallel rank = rank // N); a row is
padded to a multiple of N and cut into N contiguous equal chunks, each rank runs the model on its chunk, and
attention lets each query see every earlier key of its own sample, wherever that key lives. Per-token outputs
(log-probs, scores) are gathered back into the whole row, so the loss is computed as for the unsplit row.
After OpenRLHF (``openrlhf/models/ring_attn_utils.py``) and zhuzilin/ring-flash-attention's llama3 variant.

Two kernels behind one attention function, registered as ``rlhf_ring`` in transformers' ``AttentionInterface``:

- CUDA with ``flash_attn`` and ``ring_flash_attn`` installed and a packed row (batch 1):
  ``ring_flash_attn.llama3_flash_attn_varlen_func`` with the chunk's cu_seqlens from
  ``llama3_flash_attn_prepare_cu_seqlens`` (what ``update_ring_flash_attn_params`` computes), K/V heads in
  strides of ``model.ring_head_stride``.
- otherwise (CPU, no flash-attn, padded rows): K/V all-gathered over the ring group, ``ring_head_stride`` K/V
  heads at a time, with an autograd-aware collective (its backward sums each chunk's K/V gradient from every
  rank back to the owner), then SDPA with an explicit mask: same sample and key position <= query position.

Gradients: gathered outputs take the local slice of the gradient in backward (every rank of the ring computes
the same loss from the same gathered values), so the ranks of a ring together hold one gradient of the group's
loss, each the part that flows through its chunk. The data-parallel all-reduce over all processes sums those
parts; the trained engine therefore counts all its processes, ranks x ring (``RolePlan.processes``), when it
undoes DeepSpeed's average.

Outside ``RingChunk.active()`` (generation, greedy scoring) the function is plain SDPA on whatever it is given.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.distributed as dist

ATTN_NAME = "rlhf_ring"


@dataclass
class RingGroup:
    """This process's ring: its size, its rank inside the ring, the ring's process group and the head stride."""

    size: int
    rank: int
    group: Any
    head_stride: int
    flash: bool


_RING: Optional[RingGroup] = None
# The chunk whose forward is running (set by RingChunk.active()).
_ACTIVE: Optional[RingChunk] = None


def setup_ring(size: int, head_stride: int = 1, device: str = "cpu") -> Optional[RingGroup]:
    """Create the ring groups of the default process group (every rank calls this, in the same order) and keep
    this rank's; None (and nothing created) for size 1."""
    global _RING
    if size <= 1:
        _RING = None
        return None
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % size:
        raise ValueError(
            f"model.ring_attn_size={size} does not divide the role's {world} processes; use a divisor of {world}"
        )
    mine = None
    for start in range(0, world, size):
        g = dist.new_group(list(range(start, start + size)))
        if start <= rank < start + size:
            mine = g
    _RING = RingGroup(size=size, rank=rank % size, group=mine, head_stride=head_stride, flash=flash_available(device))
    return _RING


def get_ring() -> Optional[RingGroup]:
    """The ring of this process, None when sequences are not split."""
    return _RING


def clear_ring() -> None:
    global _RING
    _RING = None


def flash_available(device: str) -> bool:
    return (
        device == "cuda"
        and importlib.util.find_spec("flash_attn") is not None
        and importlib.util.find_spec("ring_flash_attn") is not None
    )


def install(model) -> None:
    """Route the attention of every HF model inside `model` (DeepSpeed and PEFT wrappers included) through
    ``rlhf_ring``: the registered function, not a patch of transformers' internals."""
    _register()
    seen = set()
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "_attn_implementation"):
            continue
        seen.add(id(cfg))
        if hasattr(m, "set_attn_implementation"):
            m.set_attn_implementation(ATTN_NAME)
        else:
            cfg._attn_implementation = ATTN_NAME


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def mask(*args, **kwargs):
        # Inside a ring forward the attention builds its own mask over the whole row: skip transformers'.
        return None if _ACTIVE is not None else sdpa_mask(*args, **kwargs)

    AttentionInterface.register(ATTN_NAME, ring_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, mask)
    _registered = True


# ---- the row split ---------------------------------------------------------------------------------------
@dataclass
class RingChunk:
    """This rank's chunk of a [B, L] batch: columns [start, stop) of the row padded to `total` = N x chunk.

    segments [B, total]: which sample each position belongs to (attention stays inside a sample; the padding
    tail is a sample of its own). cu_seqlens: the packed row's sample boundaries over `total` (batch 1 only)."""

    ring: RingGroup
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    start: int
    stop: int
    total: int
    length: int
    padded_ids: torch.Tensor
    cu_seqlens: Optional[torch.Tensor] = None
    _flash_params: Optional[tuple] = None

    @contextlib.contextmanager
    def active(self) -> Iterator[RingChunk]:
        """The model's attention runs over the ring for forwards inside this block."""
        global _ACTIVE
        prev, _ACTIVE = _ACTIVE, self
        try:
            yield self
        finally:
            _ACTIVE = prev

    @property
    def next_ids(self) -> torch.Tensor:
        """[B, chunk] the token after each position of the chunk (pad id 0 past the end of the row)."""
        return self.padded_ids[:, self.start + 1 : self.stop + 1]

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Per-position values of the chunk [B, chunk, ...] -> the whole row [B, L, ...] on every ring rank.
        Backward keeps the local slice of the gradient (module docstring says why)."""
        full = _GatherKeepLocal.apply(local, 1, self.ring.group)
        return full[:, : self.length]

    def flash_params(self):
        if self._flash_params is None:
            from ring_flash_attn import llama3_flash_attn_prepare_cu_seqlens

            self._flash_params = llama3_flash_attn_prepare_cu_seqlens(
                self.cu_seqlens, True, self.ring.rank, self.ring.size
            )
        return self._flash_params


def split(
    ring: RingGroup,
    input_ids: torch.Tensor,
    *,
    position_ids: Optional[torch.Tensor] = None,
    seq_lens: Optional[Sequence[int]] = None,
    attention_mask: Optional[torch.Tensor] = None,
) -> RingChunk:
    """This rank's chunk of `input_ids` [B, L].

    A packed row (B = 1) gives `seq_lens` (samples end to end) and its per-sample `position_ids`; a padded batch
    gives `attention_mask` [B, L] (real tokens 1; padding becomes a segment of its own) and positions 0..L-1,
    as transformers' default for it."""
    b, length = input_ids.shape
    n = ring.size
    chunk = -(-max(length, 1) // n)
    total = chunk * n
    pad = total - length
    device = input_ids.device
    ids = torch.nn.functional.pad(input_ids, (0, pad + 1), value=0)  # one more: the label of the last position
    cu = None
    if seq_lens is not None:
        if b != 1:
            raise ValueError(f"a packed batch has one row, got {b}")
        lens = [int(x) for x in seq_lens if int(x) > 0] + ([pad] if pad else [])
        if sum(lens) < total:  # a row with positions beyond the samples (should not happen): one more segment
            lens.append(total - sum(lens))
        counts = torch.tensor(lens, device=device)
        segments = torch.repeat_interleave(torch.arange(len(lens), device=device), counts)[None]
        cu = torch.nn.functional.pad(torch.cumsum(counts, 0), (1, 0)).to(torch.int32)
        if position_ids is None:
            position_ids = torch.cat([torch.arange(k, device=device) for k in lens])[None]
        else:
            tail = torch.arange(pad, device=device)[None].expand(b, pad)
            position_ids = torch.cat([position_ids.to(device), tail], dim=1)
    else:
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        mask = torch.nn.functional.pad(mask.long(), (0, pad), value=0)
        segments = mask  # real tokens 1, padding 0: padding never mixes with the sample
        position_ids = torch.arange(total, device=device)[None].expand(b, total)
    start = ring.rank * chunk
    stop = start + chunk
    return RingChunk(
        ring=ring,
        input_ids=ids[:, start:stop],
        position_ids=position_ids[:, start:stop].contiguous(),
        segments=segments,
        start=start,
        stop=stop,
        total=total,
        length=length,
        padded_ids=ids,
        cu_seqlens=cu,
    )


# ---- collectives -----------------------------------------------------------------------------------------
def _all_gather_cat(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


class _GatherKeepLocal(torch.autograd.Function):
    """All-gather along `dim`; backward returns this rank's slice of the (identical) full gradient."""

    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.rank, ctx.size = dim, dist.get_rank(group), x.shape[dim]
        return _all_gather_cat(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return grad.narrow(ctx.dim, ctx.rank * ctx.size, ctx.size).contiguous(), None, None


class _GatherSumGrad(torch.autograd.Function):
    """All-gather along `dim`; backward sums every rank's gradient of this rank's slice (K/V: each rank's
    queries contribute to the keys of every earlier chunk)."""

    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group, ctx.rank, ctx.size = dim, group, dist.get_rank(group), x.shape[dim]
        return _all_gather_cat(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == "nccl":
            parts = [p.contiguous() for p in grad.chunk(dist.get_world_size(ctx.group), dim=ctx.dim)]
            out = torch.empty_like(parts[ctx.rank])
            dist.reduce_scatter(out, parts, group=ctx.group)
            return out, None, None
        dist.all_reduce(grad, group=ctx.group)  # gloo has no reduce-scatter
        return grad.narrow(ctx.dim, ctx.rank * ctx.size, ctx.size).contiguous(), None, None


# ---- the attention function --------------------------------------------------------------------------------
def ring_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query [B, H, chunk, D], key/value [B, Hkv, chunk, D] -> output
    [B, chunk, H, D]. Plain SDPA outside a ring forward."""
    chunk = kwargs.pop("ring_chunk", None) or _ACTIVE
    if chunk is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if chunk.ring.flash and query.is_cuda and chunk.cu_seqlens is not None:
        return _flash_forward(chunk, query, key, value, dropout, scaling), None
    return _gathered_forward(chunk, query, key, value, dropout, scaling), None


def _flash_forward(chunk: RingChunk, q, k, v, dropout: float, scaling: Optional[float]) -> torch.Tensor:
    from ring_flash_attn import llama3_flash_attn_varlen_func

    cu_q, cu_k, max_q, max_k, k_slice = chunk.flash_params()
    out = llama3_flash_attn_varlen_func(
        q[0].transpose(0, 1).contiguous(),  # [chunk, H, D]
        k[0].transpose(0, 1).contiguous(),
        v[0].transpose(0, 1).contiguous(),
        cu_q.to(q.device),
        cu_k.to(q.device),
        max_q,
        max_k,
        heads_k_stride=chunk.ring.head_stride,
        local_k_slice=k_slice,
        dropout_p=dropout,
        softmax_scale=scaling,
        causal=True,
        group=chunk.ring.group,
    )
    return out.unsqueeze(0)


def _gathered_forward(chunk: RingChunk, q, k, v, dropout: float, scaling: Optional[float]) -> torch.Tensor:
    heads, kv_heads = q.shape[1], k.shape[1]
    rep = heads // kv_heads
    stop = chunk.stop  # keys after the chunk are never attended (causal): gathered, then cut
    seg = chunk.segments.to(q.device)
    qpos = torch.arange(chunk.start, stop, device=q.device)
    kpos = torch.arange(stop, device=q.device)
    allowed = (seg[:, chunk.start : stop, None] == seg[:, None, :stop]) & (kpos[None, :] <= qpos[:, None])
    mask = allowed[:, None]  # [B, 1, chunk, stop], True where a query attends
    stride = max(min(chunk.ring.head_stride, kv_heads), 1)
    outs = []
    for h in range(0, kv_heads, stride):
        kk = _GatherSumGrad.apply(k[:, h : h + stride], 2, chunk.ring.group)[:, :, :stop]
        vv = _GatherSumGrad.apply(v[:, h : h + stride], 2, chunk.ring.group)[:, :, :stop]
        if rep > 1:
            kk = kk.repeat_interleave(rep, dim=1)
            vv = vv.repeat_interleave(rep, dim=1)
        qq = q[:, h * rep : (h + stride) * rep]
        outs.append(
            torch.nn.functional.scaled_dot_product_attention(
                qq, kk, vv, attn_mask=mask, dropout_p=dropout, scale=scaling
            )
        )
    return torch.cat(outs, dim=1).transpose(1, 2).contiguous()


# ---- forwards of a split row (the hooks of the objectives and the policy) ---------------------------------
def forward_chunk(model, chunk: RingChunk, **kwargs):
    """The model's output on this rank's chunk (logits [B, chunk, ...]), attention over the ring.

    The chunk also travels as a keyword argument, which transformers hands down to the attention function:
    gradient checkpointing recomputes a layer in backward, after this block has exited, with the same keywords."""
    with chunk.active():
        return model(
            input_ids=chunk.input_ids, position_ids=chunk.position_ids, use_cache=False, ring_chunk=chunk, **kwargs
        )


def packed_token_logps(model, ring: RingGroup, batch: dict):
    """Per-token next-token log-probs [1, L-1] of a packed batch (input_ids [1, L], position_ids, seq_lens),
    equal to the unsplit forward's, and the output of this rank's chunk (for an aux loss)."""
    from rlhf.algos.logprobs import token_logprobs

    if "seq_lens" not in batch:
        raise ValueError("model.ring_attn_size > 1 splits packed rows: set data.packing=true")
    seq_lens = batch["seq_lens"].tolist() if torch.is_tensor(batch["seq_lens"]) else batch["seq_lens"]
    chunk = split(ring, batch["input_ids"], position_ids=batch.get("position_ids"), seq_lens=seq_lens)
    out = forward_chunk(model, chunk)
    local = token_logprobs(out.logits, chunk.next_ids)
    return chunk.gather(local)[:, :-1], out


def sequence_scores(model, ring: RingGroup, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A sequence classifier's score [B] of padded rows, pooled like transformers' (the rightmost token that is
    not padding), from the score head's per-token output gathered over the ring."""
    inner = model
    while isinstance(getattr(inner, "module", None), torch.nn.Module):
        inner = inner.module
    head = next((m for name, m in inner.named_modules() if name.split(".")[-1] == "score"), None)
    if head is None:
        raise ValueError(
            f"{type(inner).__name__} has no `score` head: ring attention splits HF *ForSequenceClassification"
        )
    captured: list = []
    handle = head.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        chunk = split(ring, input_ids, attention_mask=attention_mask)
        forward_chunk(model, chunk)
    finally:
        handle.remove()
    scores = chunk.gather(captured[-1].float())[..., 0]  # [B, L]
    pad_id = inner.config.get_text_config().pad_token_id
    if pad_id is None:
        return scores[:, -1]
    non_pad = (input_ids != pad_id).to(torch.int32)
    last = (torch.arange(input_ids.shape[1], device=input_ids.device) * non_pad).argmax(-1)
    return scores[torch.arange(len(scores), device=scores.device), last]
