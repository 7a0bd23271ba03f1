"""Error types of the data pipeline: a bad row is located (source, file:line, key) and says what to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class BadRow:
    """One row left out of a data set.

    `origin` is "path:line" for JSON lines (1-based line) and "path:row i" for JSON lists, parquet files and
    hub data sets (0-based row index). `reason` is a short category shared by rows with the same fault
    ("missing key 'response'", "invalid JSON"), so that summaries can group them; `detail` says more.
    """

    source: str
    origin: str
    reason: str
    detail: str = ""
    key: Optional[str] = None


class RowError(ValueError):
    """A problem with one row found while validating or tokenizing it, not yet tied to a source and origin.

    The dataset builder turns it into a `BadRow` (bad_rows=skip) or a `DataError` (bad_rows=error).
    """

    def __init__(self, reason: str, *, key: Optional[str] = None, detail: str = ""):
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason
        self.key = key
        self.detail = detail

    def at(self, source: str, origin: str) -> BadRow:
        return BadRow(source=source, origin=origin, reason=self.reason, detail=self.detail, key=self.key)


class DataError(Exception):
    """A data problem the user must fix; the message names the source, the place, the key and the remedy."""

    def __init__(
        self,
        problem: str,
        *,
        source: Optional[str] = None,
        origin: Optional[str] = None,
        key: Optional[str] = None,
        hint: Optional[str] = None,
    ):
        self.problem = problem
        self.source = source
        self.origin = origin
        self.key = key
        self.hint = hint
        where = []
        if source is not None:
            where.append(f"data source '{source}'")
        if origin is not None:
            where.append(f"at {origin}")
        if key is not None:
            where.append(f"key '{key}'")
        message = (", ".join(where) + ": " if where else "") + problem
        if hint:
            message += f". {hint[0].upper()}{hint[1:]}"
        super().__init__(message)

    @classmethod
    def from_bad_row(cls, bad: BadRow, hint: Optional[str] = None) -> DataError:
        problem = bad.reason + (f" ({bad.detail})" if bad.detail else "")
        return cls(problem, source=bad.source, origin=bad.origin, key=bad.key, hint=hint)
