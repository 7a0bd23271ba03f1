"""From one scored rollout to the minibatches of its optimizer steps, sharded over a role's ranks."""

from __future__ import annotations

from rlhf.types import Experience, LossNorm, MiniBatch


def minibatches(
    exp: Experience, *, train_batch_samples: int, update_epochs: int, seed: int, max_len: float | None = None
) -> list[MiniBatch]:
    """`update_epochs` shuffled passes over `exp`, each cut into optimizer steps of `train_batch_samples` rows.

    Each minibatch carries its global loss normalizers: response tokens of the kept rows (at least 1), rows,
    and `max_len` (the response width when None) for seq_mean_token_sum_norm."""
    import torch

    n = len(exp)
    if n % train_batch_samples:
        raise ValueError(
            f"{n} rollout rows do not split into optimizer steps of train_batch_samples={train_batch_samples}"
        )
    g = torch.Generator().manual_seed(seed)
    width = float(exp.action_mask.shape[1]) if max_len is None else float(max_len)
    out = []
    for _ in range(update_epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, train_batch_samples):
            rows = exp.select(perm[i : i + train_batch_samples])
            norm = LossNorm(
                num_tokens=float(rows.action_mask.sum().clamp(min=1)), num_seqs=float(len(rows)), max_len=width
            )
            out.append(MiniBatch(rows, norm))
    return out


def per_rank(minis: list[MiniBatch], ranks: int) -> list[list[MiniBatch]]:
    """Rank r's contiguous shard of every minibatch, in step order: what each rank's ``train`` receives."""
    shards: list[list[MiniBatch]] = [[] for _ in range(ranks)]
    for mini in minis:
        for r, shard in enumerate(mini.split(ranks)):
            shards[r].append(shard)
    return shards
