"""Token log-probabilities, entropies and masked reductions.

A policy forward over a large vocabulary yields logits [B, T, V] (for V = 152k and 16 x 640 tokens that is
6 GiB in fp32). `token_logprobs` and `entropy_from_logits` therefore work on chunks of rows: each chunk is
upcast to fp32 on its own, and their backward passes recompute the softmax chunk by chunk from the saved
logits instead of keeping an fp32 copy of the whole tensor alive until backward. Results are fp32 (fp64 for
fp64 logits) whatever the logits' dtype.

Masks are float or bool tensors of the same shape as the values, 1 = real response token.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

# Elements in one chunk's fp32 working copy (256 MiB); chunks hold whole rows of the vocabulary.
DEFAULT_CHUNK_ELEMENTS = 1 << 26

_Slices = Tuple[slice, slice]


def row_chunks(batch: int, time: int, max_rows: int) -> Iterator[_Slices]:
    """Yield (batch slice, time slice) pairs covering a [batch, time] grid, each at most `max_rows` cells.

    Chunks take whole sequences when `max_rows >= time`, else pieces of one sequence, so that indexing
    a [B, T, V] tensor with a pair is always a view (no copy even when the tensor is a non-contiguous slice).
    """
    if max_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {max_rows}")
    if max_rows >= time:
        step = max(1, max_rows // max(time, 1))
        for b0 in range(0, batch, step):
            yield slice(b0, min(b0 + step, batch)), slice(0, time)
    else:
        for b in range(batch):
            for t0 in range(0, time, max_rows):
                yield slice(b, b + 1), slice(t0, min(t0 + max_rows, time))


def rows_per_chunk(vocab: int, chunk_rows: Optional[int]) -> int:
    """`chunk_rows` if given, else the rows of `vocab` entries that fit in DEFAULT_CHUNK_ELEMENTS."""
    return chunk_rows if chunk_rows is not None else max(1, DEFAULT_CHUNK_ELEMENTS // max(vocab, 1))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype chunks are computed in: fp32, or fp64 for fp64 logits."""
    # fp32 at least: bf16/fp16 log-softmax over a large vocabulary loses most of its mantissa.
    return torch.promote_types(dtype, torch.float32)


def scaled_logits(chunk: torch.Tensor, dtype: torch.dtype, temperature: float) -> torch.Tensor:
    """chunk cast to `dtype` and divided by `temperature` (no copy for fp32 input at temperature 1)."""
    x = chunk.to(dtype)
    return x / temperature if temperature != 1.0 else x


def _check_logits(logits: torch.Tensor, temperature: float) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


class _TokenLogProbs(torch.autograd.Function):
    """log_softmax(logits / temperature)[label], chunked; backward recomputes the softmax per chunk."""

    @staticmethod
    def forward(ctx, logits, labels, temperature, rows):
        B, T, _ = logits.shape
        out = torch.empty(B, T, dtype=compute_dtype(logits.dtype), device=logits.device)
        for bs, ts in row_chunks(B, T, rows):
            logp = torch.log_softmax(scaled_logits(logits[bs, ts], out.dtype, temperature), dim=-1)
            out[bs, ts] = logp.gather(-1, labels[bs, ts].unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(logits, labels)
        ctx.temperature, ctx.rows, ctx.dtype = temperature, rows, out.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, labels = ctx.saved_tensors
        temperature = ctx.temperature
        B, T, _ = logits.shape
        grad = torch.empty_like(logits)
        for bs, ts in row_chunks(B, T, ctx.rows):
            logp = torch.log_softmax(scaled_logits(logits[bs, ts], ctx.dtype, temperature), dim=-1)
            g = grad_out[bs, ts].to(ctx.dtype).unsqueeze(-1)
            # d logp_y / d x_j = 1[j = y] - softmax_j; the 1/temperature comes from x = logits / temperature.
            chunk_grad = logp.exp_().mul_(-g)
            chunk_grad.scatter_add_(-1, labels[bs, ts].unsqueeze(-1), g)
            if temperature != 1.0:
                chunk_grad.div_(temperature)
            grad[bs, ts] = chunk_grad
        return grad, None, None, None


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    chunk_rows: Optional[int] = None,
) -> torch.Tensor:
    """Log-probability of each label under softmax(logits / temperature).

    logp[b, t] = logits[b, t, y] / tau - logsumexp_v(logits[b, t, v] / tau),  y = labels[b, t];
    computed as log_softmax + gather on each chunk, so fp32 results equal the unchunked ones bit for bit.

    Args:
        logits: [B, T, V], any float dtype; logits[:, t] must already be the prediction for labels[:, t]
            (shift before calling; see `rlhf.algos.sft.shift_for_causal_lm`).
        labels: [B, T] integer ids in [0, V). Positions to ignore must still hold a valid id (e.g. 0); mask the
            result instead.
        temperature: tau > 0; use the sampling temperature of the rollout so that the trainer's log-probs
            match the sampler's.
        chunk_rows: rows (positions) per chunk; None picks about 256 MiB of fp32 per chunk.

    Returns:
        [B, T] fp32 (fp64 for fp64 logits) log-probabilities, differentiable w.r.t. logits.
    """
    _check_logits(logits, temperature)
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels {tuple(labels.shape)} must match logits [B, T] {tuple(logits.shape[:2])}")
    rows = rows_per_chunk(logits.shape[-1], chunk_rows)
    return _TokenLogProbs.apply(logits, labels.long(), float(temperature), rows)


def _p_times(logp: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """exp(logp) * x, with 0 where p = 0 (a -inf logit would otherwise give 0 * -inf = NaN)."""
    p = logp.exp()
    return torch.where(p > 0, p * x, torch.zeros_like(p))


class _Entropy(torch.autograd.Function):
    """Entropy of softmax(logits / temperature), chunked; backward recomputes the softmax per chunk."""

    @staticmethod
    def forward(ctx, logits, temperature, rows):
        B, T, _ = logits.shape
        ent = torch.empty(B, T, dtype=compute_dtype(logits.dtype), device=logits.device)
        for bs, ts in row_chunks(B, T, rows):
            logp = torch.log_softmax(scaled_logits(logits[bs, ts], ent.dtype, temperature), dim=-1)
            ent[bs, ts] = -_p_times(logp, logp).sum(-1)
        ctx.save_for_backward(logits, ent)
        ctx.temperature, ctx.rows = temperature, rows
        return ent

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, ent = ctx.saved_tensors
        temperature = ctx.temperature
        B, T, _ = logits.shape
        grad = torch.empty_like(logits)
        for bs, ts in row_chunks(B, T, ctx.rows):
            logp = torch.log_softmax(scaled_logits(logits[bs, ts], ent.dtype, temperature), dim=-1)
            # dH/dx_j = -p_j (log p_j + H)
            chunk_grad = _p_times(logp, logp + ent[bs, ts].unsqueeze(-1))
            chunk_grad.mul_(-grad_out[bs, ts].to(ent.dtype).unsqueeze(-1))
            if temperature != 1.0:
                chunk_grad.div_(temperature)
            grad[bs, ts] = chunk_grad
        return grad, None, None


def entropy_from_logits(
    logits: torch.Tensor, temperature: float = 1.0, chunk_rows: Optional[int] = None
) -> torch.Tensor:
    """Entropy H[b, t] = -sum_v p_v log p_v of p = softmax(logits[b, t] / temperature).

    Args:
        logits: [B, T, V], any float dtype.
        temperature: tau > 0 (the sampling temperature, as in `token_logprobs`).
        chunk_rows: rows per chunk; None picks about 256 MiB of fp32 per chunk.

    Returns:
        [B, T] fp32 (fp64 for fp64 logits) entropies in nats, differentiable w.r.t. logits.
    """
    _check_logits(logits, temperature)
    rows = rows_per_chunk(logits.shape[-1], chunk_rows)
    return _Entropy.apply(logits, float(temperature), rows)


def _count(mask: torch.Tensor, dim: Optional[int]) -> torch.Tensor:
    return mask.sum() if dim is None else mask.sum(dim)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """sum(x * mask) over all elements (dim=None) or along `dim`. x and mask share a shape."""
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """sum(x * mask) / sum(mask) over all elements or along `dim`.

    An empty mask gives 0 (the count is clamped to 1) rather than NaN: a micro-batch may hold no response
    tokens, and a NaN would poison the whole step.
    """
    m = mask.to(x.dtype)
    return masked_sum(x, m, dim) / _count(m, dim).clamp_min(1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked elements: mean((x - mean)^2), times n / (n - 1) when `unbiased`.

    With one element (or none) the variance is 0 rather than NaN.
    """
    m = mask.to(x.dtype)
    mean = masked_mean(x, m, dim)
    centered = x - (mean if dim is None else mean.unsqueeze(dim))
    var = masked_mean(centered.square(), m, dim)
    if unbiased:
        n = _count(m, dim)
        var = var * n / (n - 1).clamp_min(1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Standardize x over all masked elements: (x - mean) / sqrt(var + eps), var unbiased.

    With `shift_mean=False` the mean is added back (only the scale changes), as in PPO value/reward scaling.
    Positions outside the mask are set to 0.
    """
    m = mask.to(x.dtype)
    mean = masked_mean(x, m)
    var = masked_var(x, m)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


# ---- the LM head fused with the log-probs ----------------------------------------------------------------------
# Given the hidden states h [N, H] at the positions that predict `labels` and the head's weight W [V, H], the
# log-probs (and entropy) of softmax(h W^T / temperature) come from chunks of rows: each chunk's logits exist
# only while that chunk is reduced, and backward recomputes them (one more [rows, H] x [H, V] product per chunk)
# instead of keeping [N, V] logits and their gradient alive. The per-chunk math is in plain functions that
# `fused_head_kernels(compiled=True)` hands to torch.compile, which fuses each into one or two passes over the
# chunk's logits.


def _head_forward(logits: torch.Tensor, labels: torch.Tensor, inv_t: float, with_entropy: bool):
    """One chunk: (log-prob of each label, logsumexp, entropy or None) of softmax(logits * inv_t), in fp32 (fp64
    for fp64 logits). `logits` is the chunk's own product, overwritten (in place: fewer passes over the chunk)."""
    x = logits.to(compute_dtype(logits.dtype))
    if inv_t != 1.0:
        x.mul_(inv_t)
    lse = torch.logsumexp(x, dim=-1)
    logp = x.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return logp, lse, None
    x.sub_(lse.unsqueeze(-1))  # log p (finite for finite logits)
    return logp, lse, -(x.exp().mul_(x)).sum(-1)


def _head_backward(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ent: Optional[torch.Tensor],
    g_logp: torch.Tensor,
    g_ent: Optional[torch.Tensor],
    inv_t: float,
) -> torch.Tensor:
    """One chunk: d(loss)/d(logits) in the logits' dtype, from the gradients of the log-probs and the entropy.
    d logp_y / dx_j = 1[j = y] - p_j; dH / dx_j = -p_j (log p_j + H); and x = logits * inv_t. `logits` is the
    chunk's recomputed product, overwritten."""
    x = logits.to(compute_dtype(logits.dtype))
    if inv_t != 1.0:
        x.mul_(inv_t)
    x.sub_(lse.unsqueeze(-1))  # log p
    g_logp = g_logp * inv_t
    if g_ent is not None and ent is not None:
        g_ent = g_ent * inv_t
        p = x.exp()
        # -p_j (g_logp + g_ent (log p_j + H)) = -p_j (g_ent log p_j + (g_logp + g_ent H))
        grad = p.mul_(x.mul_(g_ent.unsqueeze(-1)).add_((g_logp + g_ent * ent).unsqueeze(-1))).neg_()
    else:
        grad = x.exp_().mul_(-g_logp.unsqueeze(-1))
    grad.scatter_add_(-1, labels.unsqueeze(-1), g_logp.unsqueeze(-1))
    return grad.to(logits.dtype)


_COMPILED: dict = {}


def _or_eager(compiled_fn, eager_fn):
    """`compiled_fn`, and from its first failure on (no compiler, an unsupported backend) `eager_fn` for the rest
    of the process, with one warning."""

    def call(*args):
        if not _COMPILED.get("failed"):
            try:
                return compiled_fn(*args)
            except Exception as e:  # noqa: BLE001 - any compile failure: the eager math gives the same numbers
                _COMPILED["failed"] = True
                import logging

                logging.getLogger(__name__).warning(
                    "torch.compile of the fused LM head failed (%s: %s); it runs eagerly (engine.compile_lm_head="
                    "false says so up front)",
                    type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "",
                )
        return eager_fn(*args)

    return call


def fused_head_kernels(compiled: bool):
    """The per-chunk (forward, backward) functions, through torch.compile when `compiled` (built once; eager
    from a failure on)."""
    if not compiled:
        return _head_forward, _head_backward
    if "kernels" not in _COMPILED:
        _COMPILED["kernels"] = (
            _or_eager(torch.compile(_head_forward), _head_forward),
            _or_eager(torch.compile(_head_backward), _head_backward),
        )
    return _COMPILED["kernels"]


class _HeadLogps(torch.autograd.Function):
    """(log-probs [N], entropy [N]) of softmax(hidden @ weight^T / temperature) at `labels`, by chunks of rows."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, temperature, rows, with_entropy, compiled):
        fwd, _ = fused_head_kernels(compiled)
        n = hidden.shape[0]
        inv_t = 1.0 / temperature
        dtype = compute_dtype(weight.dtype)
        logp = torch.empty(n, dtype=dtype, device=hidden.device)
        lse = torch.empty(n, dtype=dtype, device=hidden.device)
        ent = torch.empty(n, dtype=dtype, device=hidden.device) if with_entropy else None
        for r0 in range(0, n, rows):
            sl = slice(r0, min(r0 + rows, n))
            lp, ls, en = fwd(hidden[sl] @ weight.t(), labels[sl], inv_t, with_entropy)
            logp[sl], lse[sl] = lp, ls
            if ent is not None:
                ent[sl] = en
        ctx.save_for_backward(hidden, weight, labels, lse, ent)
        ctx.inv_t, ctx.rows, ctx.compiled = inv_t, rows, compiled
        ctx.set_materialize_grads(False)
        if ent is None:
            return logp, torch.zeros(0, dtype=dtype, device=hidden.device)
        return logp, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, g_logp, g_ent):
        hidden, weight, labels, lse, ent = ctx.saved_tensors
        if g_logp is None and g_ent is None:
            return (None,) * 7
        _, bwd = fused_head_kernels(ctx.compiled)
        n = hidden.shape[0]
        if g_logp is None:
            g_logp = torch.zeros(n, dtype=lse.dtype, device=lse.device)
        if ent is None or (g_ent is not None and g_ent.numel() == 0):
            g_ent = None
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g_hidden = torch.empty_like(hidden) if want_h else None
        # The head's gradient sums over all chunks: in fp32, whatever the weight's dtype.
        g_weight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) if want_w else None
        for r0 in range(0, n, ctx.rows):
            sl = slice(r0, min(r0 + ctx.rows, n))
            h = hidden[sl]
            g_logits = bwd(
                h @ weight.t(),
                labels[sl],
                lse[sl],
                ent[sl] if g_ent is not None else None,
                g_logp[sl].to(lse.dtype),
                g_ent[sl].to(lse.dtype) if g_ent is not None else None,
                ctx.inv_t,
            )
            if g_hidden is not None:
                g_hidden[sl] = g_logits @ weight
            if g_weight is not None:
                g_weight += (g_logits.t() @ h).to(g_weight.dtype)
        return g_hidden, (g_weight.to(weight.dtype) if g_weight is not None else None), None, None, None, None, None


def head_logps_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    chunk_rows: Optional[int] = None,
    compiled: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Log-probs [..., T] of `labels` under softmax(hidden @ weight^T / temperature), and the entropy when asked,
    without the [..., T, V] logits: the LM head runs chunk by chunk inside (``_HeadLogps``).

    `hidden` [..., T, H] are the states the head would read (after the final norm), `weight` the head's [V, H]
    matrix (no bias), `labels` [..., T]. Equal to ``token_logps_and_entropy(hidden @ weight.T, labels, ...)`` up
    to the rounding of the fp32 accumulations; gradients flow to `hidden` and `weight`. The entropy is detached
    unless `entropy_grad`. `compiled` runs the per-chunk math through torch.compile (`fused_head_kernels`)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if hidden.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"hidden {tuple(hidden.shape)} and head weight {tuple(weight.shape)} do not match")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} must match hidden [..., T] {tuple(hidden.shape[:-1])}")
    lead = labels.shape
    h = hidden.reshape(-1, hidden.shape[-1]).to(weight.dtype)
    # DEFAULT_CHUNK_ELEMENTS logits per chunk (256 MiB in fp32; the eager math holds about five such copies).
    rows = rows_per_chunk(weight.shape[0], chunk_rows)
    logp, ent = _HeadLogps.apply(
        h, weight, labels.reshape(-1).long(), float(temperature), rows, bool(with_entropy), bool(compiled)
    )
    if not with_entropy:
        return logp.view(lead), None
    ent = ent.view(lead)
    return logp.view(lead), ent if entropy_grad else ent.detach()
