"""Pick an implementation from a name-keyed table, with an error that lists the valid names.

Every loss and estimator in `rlhf.algos` is chosen by name through an explicit dict (greppable: search for
the table's name). This helper gives all of them the same error message.
"""

from __future__ import annotations

from typing import Mapping, TypeVar

T = TypeVar("T")


def lookup(table: Mapping[str, T], name: str, *, what: str, key: str | None = None) -> T:
    """Return `table[name]`, or raise ValueError naming `what`, the config `key` and the valid names.

    Example message: "unknown advantage estimator 'gea' (config key algo.advantage); valid names: dr_grpo,
    gae, grpo, reinforce_pp, reinforce_pp_baseline, rloo".
    """
    try:
        return table[name]
    except (KeyError, TypeError):
        where = f" (config key {key})" if key else ""
        valid = ", ".join(sorted(table))
        raise ValueError(f"unknown {what} {name!r}{where}; valid names: {valid}") from None
