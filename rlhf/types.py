"""Named containers passed between the entry point, controllers and roles.

On-policy batches are rows of ``[left-padded prompt (P) | right-padded response (R)]``. Every container
says which of its fields hold one entry per row (``ROWS``): those are what ``split`` cuts into contiguous
shards and ``cat`` joins again; every other field is a per-batch value (a width, a coefficient, a global
count) copied into each shard. Timings never travel inside a batch: the functions that produce a batch
return them beside it.

    PromptBatch  -(rollout engine)->  RolloutBatch  -(log-probs, advantages)->  Experience
    Experience  -(minibatch + shard per rank)->  MiniBatch  -(worker micro-batches)->  MiniBatch
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Optional, TypeVar

if TYPE_CHECKING:
    import torch

R = TypeVar("R", bound="_Rows")


class _Rows:
    """Row-wise split/cat/select for a dataclass whose ``ROWS`` fields are [N, ...] tensors or N-lists."""

    ROWS: ClassVar[tuple[str, ...]] = ()

    def __len__(self) -> int:
        return len(getattr(self, self.ROWS[0]))

    def _row_values(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.ROWS if getattr(self, k) is not None}

    def select(self: R, index) -> R:
        """The rows at `index` (a LongTensor or list of row numbers), per-batch fields unchanged."""
        import torch

        idx = torch.as_tensor(index, dtype=torch.long)
        out = {}
        for k, v in self._row_values().items():
            out[k] = v[idx] if isinstance(v, torch.Tensor) else [v[i] for i in idx.tolist()]
        return replace(self, **out)

    def split(self: R, parts: int) -> list[R]:
        """`parts` contiguous shards of equal size (rank r gets rows r*N/parts .. (r+1)*N/parts)."""
        n = len(self)
        if parts < 1 or n % parts:
            raise ValueError(f"cannot split {n} rows of a {type(self).__name__} into {parts} equal shards")
        size = n // parts
        rows = self._row_values()
        return [replace(self, **{k: v[i * size : (i + 1) * size] for k, v in rows.items()}) for i in range(parts)]

    def chunks(self: R, size: int) -> list[R]:
        """Consecutive shards of `size` rows (the last one shorter when `size` does not divide N)."""
        n = len(self)
        size = max(min(size, n), 1)
        rows = self._row_values()
        return [replace(self, **{k: v[i : i + size] for k, v in rows.items()}) for i in range(0, n, size)]

    @classmethod
    def cat(cls: type[R], shards: list[R]) -> R:
        """Inverse of ``split``: rows joined in order; per-batch fields taken from the first shard, which all
        shards must share."""
        import torch

        if not shards:
            raise ValueError(f"{cls.__name__}.cat of no shards")
        first = shards[0]
        out: dict[str, Any] = {}
        for k in cls.ROWS:
            vals = [getattr(s, k) for s in shards]
            if vals[0] is None:
                continue
            out[k] = torch.cat(vals, 0) if isinstance(vals[0], torch.Tensor) else [x for v in vals for x in v]
        for f in fields(first):  # type: ignore[arg-type]
            if f.name not in cls.ROWS and any(getattr(s, f.name) != getattr(first, f.name) for s in shards[1:]):
                raise ValueError(f"{cls.__name__}.cat: shards disagree on {f.name}")
        return replace(first, **out)

    def to(self: R, device) -> R:
        """The same batch with every tensor on `device`."""
        import torch

        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)  # type: ignore[arg-type]
                if isinstance(getattr(self, f.name), torch.Tensor)
            },
        )


@dataclass
class PromptBatch(_Rows):
    """Prompts to generate from: input_ids [N, P] left-padded with the pad id, attention_mask [N, P] (1 on real
    tokens). Rows are already repeated samples_per_prompt times."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    ROWS: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")

    @classmethod
    def left_padded(cls, ids: list[list[int]], pad_id: int) -> PromptBatch:
        """Token lists left-padded to the longest one."""
        import torch

        p = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), p), pad_id, dtype=torch.long)
        attn = torch.zeros((len(ids), p), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, p - len(x) :] = torch.tensor(x, dtype=torch.long)
            attn[i, p - len(x) :] = 1
        return cls(input_ids, attn)

    def unpadded(self) -> list[list[int]]:
        """The real tokens of each row."""
        return [row[mask.bool()].tolist() for row, mask in zip(self.input_ids, self.attention_mask)]


@dataclass
class RolloutBatch(_Rows):
    """One sampled response per row.

    sequences [N, P+R] long: prompt left-padded to P, response right-padded to R with the pad id.
    attention_mask [N, P+R]: 1 on real prompt and response tokens.
    action_mask [N, R]: 1 on response tokens up to and including the first EOS.
    rollout_logps [N, R] float: the engine's log-probs of the sampled tokens (0 on padding).
    finish_reason: N strings, "stop" (ended with EOS) or "length" (hit max_new_tokens).
    prompt_len: P.
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    rollout_logps: torch.Tensor
    finish_reason: list[str]
    prompt_len: int
    ROWS: ClassVar[tuple[str, ...]] = ("sequences", "attention_mask", "action_mask", "rollout_logps", "finish_reason")

    @property
    def response_width(self) -> int:
        return int(self.action_mask.shape[1])

    def responses(self) -> list[torch.Tensor]:
        """The real response tokens of each row."""
        p = self.prompt_len
        return [s[p:][m.bool()] for s, m in zip(self.sequences, self.action_mask)]

    def trimmed(self) -> RolloutBatch:
        """The response width cut to the longest real response (less work in every later pass)."""
        r = int(self.action_mask.sum(-1).max().item()) or 1
        p = self.prompt_len
        return replace(
            self,
            sequences=self.sequences[:, : p + r],
            attention_mask=self.attention_mask[:, : p + r],
            action_mask=self.action_mask[:, :r],
            rollout_logps=self.rollout_logps[:, :r],
        )


@dataclass
class Experience(_Rows):
    """A scored rollout ready for the updates: the rollout's fields plus, per row,

    old_logps [N, R]: the policy's log-probs before the update (the ratio's denominator).
    advantages [N, R], returns [N, R]: from rlhf/algos/advantages.py (0 outside train_mask).
    action_mask [N, R]: the rollout's mask with rows dropped by dynamic filtering zeroed.
    ref_logps [N, R]: the reference model's (None without a reference).
    old_values [N, R]: the critic's (None without a critic).
    rollout_logps [N, R]: the rollout engine's log-probs of the sampled tokens, for truncated importance
        sampling on old_logps - rollout_logps (None: no correction).
    kl_coef: the KL coefficient of this step (in-loss KL).
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    old_logps: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    prompt_len: int
    kl_coef: float = 0.0
    ref_logps: Optional[torch.Tensor] = None
    old_values: Optional[torch.Tensor] = None
    rollout_logps: Optional[torch.Tensor] = None
    ROWS: ClassVar[tuple[str, ...]] = (
        "sequences",
        "attention_mask",
        "action_mask",
        "old_logps",
        "advantages",
        "returns",
        "ref_logps",
        "old_values",
        "rollout_logps",
    )


@dataclass
class LossNorm:
    """Global counts of one optimizer step that every rank's loss divides by (rlhf/algos/aggregate.py), so the
    sum over ranks and micro-batches is the loss of the whole minibatch."""

    num_tokens: float
    num_seqs: float
    # Token budget per sequence (seq_mean_token_sum_norm): max_new_tokens, else the batch's response width.
    max_len: float

    def kwargs(self) -> dict[str, float]:
        return {"num_tokens": self.num_tokens, "num_seqs": self.num_seqs, "max_len": self.max_len}


@dataclass
class MiniBatch:
    """One optimizer step's rows (or one rank's shard of them) with the step's global loss normalizers; its
    shards and micro-batches keep the whole step's `norm`."""

    exp: Experience
    norm: LossNorm

    def __len__(self) -> int:
        return len(self.exp)

    def split(self, parts: int) -> list[MiniBatch]:
        return [MiniBatch(e, self.norm) for e in self.exp.split(parts)]

    def chunks(self, size: int) -> list[MiniBatch]:
        return [MiniBatch(e, self.norm) for e in self.exp.chunks(size)]

    def to(self, device) -> MiniBatch:
        return MiniBatch(self.exp.to(device), self.norm)


@dataclass
class RunResult:
    algo: str
    steps: int
    model_dir: Optional[str]
    # Metrics of the first and last logged step, and the final evaluation.
    first: dict = field(default_factory=dict)
    last: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    wall_s: float = 0.0
    # The metric a sweep optimizes (name, value).
    objective: Optional[tuple[str, float]] = None
