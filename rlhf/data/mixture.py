"""Weighted mixtures of data sources and train/eval hold-outs, both deterministic in a seed.

Mixture semantics (`mix_sources`):

- The mixture has N = sum of the source sizes rows, so equal weights on equal-size sources keep every row once.
- Weights are normalized over the sources with weight > 0; source i gets n_i = w_i * N rows, rounded by the
  largest-remainder method so that the n_i sum to N exactly (sources with a weight of 0 are left out, and then
  N counts only the others).
- A source with at least n_i rows gives a sample of n_i rows without replacement; a source with fewer rows is
  repeated whole floor(n_i / size) times plus a sample without replacement of the remainder (oversampling).
- The mixture is shuffled. Each source's sample depends only on (seed, source name), so adding a source does
  not change which rows another source contributes at the same count.
"""

from __future__ import annotations

import math
import random
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

from rlhf.data.errors import DataError

T = TypeVar("T")


def mixture_counts(sizes: Mapping[str, int], weights: Mapping[str, float]) -> Dict[str, int]:
    """Rows each source contributes to the mixture (see the module docstring); keys in `sizes` order."""
    for name, weight in weights.items():
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise DataError(
                f"weight {weight!r} is not a finite number >= 0",
                source=name,
                key=f"data.sources.{name}.weight",
                hint="weights are relative sampling weights, e.g. 1.0 and 0.5",
            )
    missing = [name for name in sizes if name not in weights]
    if missing:
        raise ValueError(f"no weight for sources {missing}")
    active = [name for name in sizes if weights[name] > 0]
    if not active:
        raise DataError(
            "every source has weight 0", key="data.sources.<name>.weight", hint="give at least one source weight > 0"
        )
    for name in active:
        if sizes[name] == 0:
            raise DataError(
                "no usable rows, but the source has a weight > 0",
                source=name,
                hint=f"check the bad-row summary, or set data.sources.{name}.weight=0",
            )
    total = sum(sizes[name] for name in active)
    weight_sum = sum(weights[name] for name in active)
    exact = {name: weights[name] / weight_sum * total for name in active}
    counts = {name: math.floor(exact[name]) for name in active}
    # Largest remainder first; ties broken by source order, so the result does not depend on float noise.
    order = sorted(active, key=lambda n: (-(exact[n] - counts[n]), active.index(n)))
    for name in order[: total - sum(counts.values())]:
        counts[name] += 1
    return {name: counts.get(name, 0) for name in sizes}


def sample_rows(rows: Sequence[T], count: int, rng: random.Random) -> List[T]:
    """`count` rows of `rows`: whole repeats when count > len(rows), then a sample without replacement."""
    repeats, remainder = divmod(count, len(rows)) if rows else (0, 0)
    picked = list(rows) * repeats
    picked += [rows[i] for i in sorted(rng.sample(range(len(rows)), remainder))]
    return picked


def mix_sources(per_source: Mapping[str, Sequence[T]], weights: Mapping[str, float], seed: int) -> List[T]:
    """Mix the rows of several sources by weight into one shuffled list (semantics in the module docstring)."""
    counts = mixture_counts({name: len(rows) for name, rows in per_source.items()}, weights)
    mixed: List[T] = []
    for name, rows in per_source.items():
        if counts[name]:
            mixed += sample_rows(rows, counts[name], random.Random(f"{seed}:{name}"))
    random.Random(seed).shuffle(mixed)
    return mixed


def train_eval_split(
    rows: Sequence[T], fraction: float, seed: int, max_rows: Optional[int] = None
) -> Tuple[List[T], List[T]]:
    """Hold out round(fraction * len(rows)) rows for eval, at most `max_rows`; with fraction > 0 and 2+ rows
    each part keeps at least one row.

    Both parts keep the original row order; which rows are held out depends only on `seed` and len(rows).
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(
            f"eval_fraction={fraction} is not in [0, 1)",
            key="data.eval_fraction",
            hint="use e.g. 0.05 to hold out 5% of the training rows, or 0 for no held-out evaluation",
        )
    n_eval = round(fraction * len(rows))
    if max_rows is not None:
        n_eval = min(n_eval, int(max_rows))
    if fraction > 0 and len(rows) > 1:
        n_eval = min(max(n_eval, 1), len(rows) - 1)
    held = set(random.Random(seed).sample(range(len(rows)), n_eval))
    train = [row for i, row in enumerate(rows) if i not in held]
    evaluation = [row for i, row in enumerate(rows) if i in held]
    return train, evaluation
