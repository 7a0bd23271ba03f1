"""Forward passes over rollout sequences: [left-padded prompt | right-padded response] rows.

A rollout batch row is `sequences[b] = prompt (left-padded to P) + response (right-padded to R)`;
`action_mask[b, t]` marks real response tokens (through the first EOS). Logits at position P-1+t predict
response token t, so response log-probs come from `logits[:, P-1:-1]`.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from rlhf.algos.logprobs import (
    _check_logits,
    _p_times,
    compute_dtype,
    head_logps_and_entropy,
    row_chunks,
    rows_per_chunk,
    scaled_logits,
    token_logprobs,
)
from rlhf.models.arch import PLAIN_HEAD_MODEL_TYPES


@dataclass(frozen=True)
class HeadMode:
    """How response log-probs leave the LM head. ``fused``: the head runs inside the log-prob computation,
    chunk by chunk, so no [tokens, vocabulary] logits exist (``engine.fused_lm_head``; models of
    PLAIN_HEAD_MODEL_TYPES, else the logits path). ``compiled``: its per-chunk math through torch.compile."""

    fused: bool = False
    compiled: bool = False

    @classmethod
    def of(cls, engine, device: str) -> HeadMode:
        """The mode of a role with EngineConfig `engine` on `device` (compiled only on GPUs)."""
        fused = bool(getattr(engine, "fused_lm_head", False))
        return cls(fused=fused, compiled=fused and bool(getattr(engine, "compile_lm_head", False)) and device == "cuda")


LOGITS = HeadMode()


def plain_head(model) -> Optional[Tuple[torch.nn.Module, torch.nn.Linear]]:
    """(the transformers causal LM, its head) when the fused head applies to `model`, else None: a plain
    bias-free linear head (not LoRA-wrapped, not quantized, not ZeRO-3 partitioned, not dispatched by
    accelerate) of a model type in PLAIN_HEAD_MODEL_TYPES, under any TrainEngine, DeepSpeed or PEFT wrapper."""
    m = model
    while isinstance(getattr(m, "module", None), torch.nn.Module):
        m = m.module
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    config = getattr(m, "config", None)
    head = getattr(m, "lm_head", None)
    if config is None or getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    if type(head) is not torch.nn.Linear or head.bias is not None or hasattr(head, "_hf_hook"):
        return None
    w = head.weight
    if not w.is_floating_point() or hasattr(w, "ds_id") or w.numel() == 0:
        return None
    return m, head


@contextlib.contextmanager
def head_bypassed(model, head: HeadMode):
    """Inside, `model`'s forward returns the final hidden states where it returned logits (its head swapped for
    an identity); yields the head's weight, or None where ``head.fused`` is off or does not apply (the forward
    is then untouched)."""
    found = plain_head(model) if head.fused else None
    if found is None:
        yield None
        return
    lm, linear = found
    lm.lm_head = torch.nn.Identity()
    try:
        yield linear.weight
    finally:
        lm.lm_head = linear


def logps_of(
    x: torch.Tensor,
    head_weight: Optional[torch.Tensor],
    labels: torch.Tensor,
    temperature: float,
    head: HeadMode,
    with_entropy: bool = False,
    entropy_grad: bool = False,
):
    """Log-probs (and entropy) of `labels` from what a forward under ``head_bypassed`` returned: hidden states
    when it yielded a head weight, logits otherwise."""
    if head_weight is not None:
        return head_logps_and_entropy(
            x,
            head_weight,
            labels,
            temperature,
            with_entropy=with_entropy,
            entropy_grad=entropy_grad,
            compiled=head.compiled,
        )
    return token_logps_and_entropy(x, labels, temperature, with_entropy=with_entropy, entropy_grad=entropy_grad)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded prompt starts at position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


_ACCEPTS: dict = {}


def accepts_kwarg(model, name: str) -> bool:
    """Whether the innermost module's ``forward`` (under a TrainEngine / DeepSpeed wrapper) takes `name`."""
    m = model
    while isinstance(getattr(m, "module", None), torch.nn.Module):
        m = m.module
    key = (type(m), name)
    if key not in _ACCEPTS:
        try:
            _ACCEPTS[key] = name in inspect.signature(m.forward).parameters
        except (TypeError, ValueError):
            _ACCEPTS[key] = False
    return _ACCEPTS[key]


def response_logps(
    model,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    head: HeadMode = LOGITS,
):
    """Log-probs [B, R] of the response tokens (and their entropy [B, R] when asked).

    Only the R positions that predict response tokens go through the LM head (``logits_to_keep`` where the
    model takes it): the prompt's logits are never computed. Log-probs and entropy come from one chunked pass
    over those logits (`token_logps_and_entropy`), or, with ``head.fused``, from the hidden states and the
    head's weight without logits (`logps_of`); the entropy carries a gradient only with `entropy_grad` (an
    entropy term in the loss)."""
    r = sequences.shape[1] - prompt_len
    kw = {}
    if accepts_kwarg(model, "logits_to_keep"):
        kw["logits_to_keep"] = torch.arange(prompt_len - 1, prompt_len - 1 + r, device=sequences.device)
    with head_bypassed(model, head) as head_weight:
        out = model(
            input_ids=sequences,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
            **kw,
        )
    x = out.logits if kw else out.logits[:, prompt_len - 1 : -1]
    labels = sequences[:, prompt_len:]
    logps, ent = logps_of(x, head_weight, labels, temperature, head, with_entropy, entropy_grad)
    aux = getattr(out, "aux_loss", None)
    return logps, ent, aux


class _LogpAndEntropy(torch.autograd.Function):
    """log_softmax(x)[label] and the entropy of softmax(x), x = logits / temperature, from the same chunks
    (one fp32 chunk alive at a time); backward recomputes each chunk's softmax from the saved logits."""

    @staticmethod
    def forward(ctx, logits, labels, temperature, rows):
        B, T, _ = logits.shape
        dtype = compute_dtype(logits.dtype)
        logp = torch.empty(B, T, dtype=dtype, device=logits.device)
        ent = torch.empty(B, T, dtype=dtype, device=logits.device)
        for bs, ts in row_chunks(B, T, rows):
            lsm = torch.log_softmax(scaled_logits(logits[bs, ts], dtype, temperature), dim=-1)
            logp[bs, ts] = lsm.gather(-1, labels[bs, ts].unsqueeze(-1)).squeeze(-1)
            ent[bs, ts] = -_p_times(lsm, lsm).sum(-1)
        ctx.save_for_backward(logits, labels, ent)
        ctx.temperature, ctx.rows, ctx.dtype = temperature, rows, dtype
        ctx.set_materialize_grads(False)
        return logp, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, g_logp, g_ent):
        logits, labels, ent = ctx.saved_tensors
        if g_logp is None and g_ent is None:
            return None, None, None, None
        B, T, _ = logits.shape
        grad = torch.empty_like(logits)
        for bs, ts in row_chunks(B, T, ctx.rows):
            lsm = torch.log_softmax(scaled_logits(logits[bs, ts], ctx.dtype, ctx.temperature), dim=-1)
            chunk = torch.zeros_like(lsm)
            if g_logp is not None:
                # d logp_y / d x_j = 1[j = y] - p_j
                g = g_logp[bs, ts].to(ctx.dtype).unsqueeze(-1)
                chunk = lsm.exp().mul_(-g)
                chunk.scatter_add_(-1, labels[bs, ts].unsqueeze(-1), g)
            if g_ent is not None:
                # dH / d x_j = -p_j (log p_j + H)
                h = ent[bs, ts].unsqueeze(-1)
                chunk.sub_(_p_times(lsm, lsm + h).mul_(g_ent[bs, ts].to(ctx.dtype).unsqueeze(-1)))
            if ctx.temperature != 1.0:
                chunk.div_(ctx.temperature)
            grad[bs, ts] = chunk
        return grad, None, None, None


def _kernel_logps(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> Optional[torch.Tensor]:
    """Token log-probs from a maintained fused cross-entropy kernel when one is installed and the logits are
    on a GPU (flash-attn's Triton cross-entropy, else Liger-Kernel's); None otherwise. The kernels work on
    [N, V] rows in fp32 internally and return -log p per row."""
    if not logits.is_cuda:
        return None
    B, T, V = logits.shape
    try:
        from flash_attn.ops.triton.cross_entropy import cross_entropy_loss
    except ImportError:
        cross_entropy_loss = None
    if cross_entropy_loss is not None:
        x = logits.reshape(B * T, V)
        losses, _ = cross_entropy_loss(x, labels.reshape(-1), logit_scale=1.0 / temperature, inplace_backward=False)
        return -losses.float().view(B, T)
    try:
        from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss
    except ImportError:
        return None
    # Liger writes the gradient into its input during the forward: give it a tensor nothing else reads (the
    # temperature-scaled copy, or the logits themselves, which no later code uses once log-probs exist).
    x = logits.reshape(B * T, V)
    if temperature != 1.0:
        x = x / temperature
    losses = LigerCrossEntropyLoss(reduction="none")(x, labels.reshape(-1))
    return -losses.float().view(B, T)


def token_logps_and_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    chunk_rows: Optional[int] = None,
    kernel: bool = True,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Log-probs [B, T] of `labels` under softmax(logits / temperature), and the entropy [B, T] when asked,
    without an fp32 [B, T, V] copy: chunks of rows are upcast one at a time (rlhf/algos/logprobs.py), and
    the entropy comes from the same chunks as the log-probs. Without entropy, a fused GPU kernel is used when
    installed (`_kernel_logps`; `kernel=False` forces the torch path). The entropy is detached unless
    `entropy_grad`."""
    _check_logits(logits, temperature)
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels {tuple(labels.shape)} must match logits [B, T] {tuple(logits.shape[:2])}")
    if not with_entropy:
        out = _kernel_logps(logits, labels, temperature) if kernel else None
        if out is None:
            out = token_logprobs(logits, labels, temperature=temperature, chunk_rows=chunk_rows)
        return out, None
    rows = rows_per_chunk(logits.shape[-1], chunk_rows)
    logp, ent = _LogpAndEntropy.apply(logits, labels.long(), float(temperature), rows)
    return logp, ent if entropy_grad else ent.detach()


def response_values(critic, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Critic values [B, R] of the states before each response token (token-classification head, 1 label)."""
    out = critic(
        input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False
    )
    return out.logits[:, prompt_len - 1 : -1, 0].float()


def action_mask_from(response: torch.Tensor, eos_ids: set[int], pad_id: int) -> torch.Tensor:
    """1 for response tokens up to and including the first EOS; 0 after it (and for padding)."""
    is_eos = torch.zeros_like(response, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= response == e
    # Tokens after the first EOS: the cumulative EOS count before them is >= 1.
    eos_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    mask = eos_before == 0
    if pad_id not in eos_ids:
        mask &= response != pad_id
    return mask.long()


def split_rows(batch: dict, parts: int) -> list[dict]:
    """Split every [B, ...] tensor (and list) of a batch into `parts` contiguous shards."""
    n = next(len(v) for v in batch.values() if isinstance(v, (torch.Tensor, list)))
    if n % parts:
        raise ValueError(f"cannot split {n} rows into {parts} equal shards")
    size = n // parts
    out = []
    for i in range(parts):
        shard = {}
        for k, v in batch.items():
            shard[k] = v[i * size : (i + 1) * size] if isinstance(v, (torch.Tensor, list)) else v
        out.append(shard)
    return out


def cat_rows(shards: list[dict]) -> dict:
    """Inverse of split_rows; tensors of different widths are right-padded (responses) before joining."""
    out = {}
    for k in shards[0]:
        vals = [s[k] for s in shards]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.cat(vals, 0) if vals[0].dim() else torch.stack(vals)
        elif isinstance(vals[0], list):
            out[k] = [x for v in vals for x in v]
        else:
            out[k] = vals[0]
    return out
