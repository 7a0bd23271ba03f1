"""Content digests of a run's data sources, recorded as MLflow dataset inputs.

A digest is the SHA-256 of the bytes the reader sees (a file, or every data file of a directory in sorted
order, each preceded by its relative name), so two runs share a digest exactly when they read the same data.
Hub data sets cannot be hashed offline: they are recorded by name with the digest `hub:<name>`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

# MLflow stores dataset digests in a 36-character column.
DIGEST_CHARS = 16
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SourceDigest:
    name: str
    # What the config says (asset:sft, ./data/x.jsonl, org/name).
    path: str
    # The local file or directory read, None for a hub data set.
    location: Optional[str]
    digest: str
    n_files: int
    n_bytes: int


def digest_path(path: Path) -> tuple[str, int, int]:
    """(digest, number of files, bytes) of a file or of every file below a directory."""
    path = Path(path)
    files = (
        [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    )
    h = hashlib.sha256()
    total = 0
    for f in files:
        if path.is_dir():
            # The name is part of the content: moving test rows into train changes the data.
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
                total += len(chunk)
    return h.hexdigest()[:DIGEST_CHARS], len(files), total


def source_digests(data_cfg) -> list[SourceDigest]:
    """One digest per source of a `DataConfig` (in the order of `data.sources`)."""
    from rlhf.data.readers import _resolve_local

    out = []
    for name, src in data_cfg.sources.items():
        local = _resolve_local(name, src.path)
        if local is None:
            out.append(SourceDigest(name, src.path, None, f"hub:{src.path}"[:36], 0, 0))
            continue
        digest, n_files, n_bytes = digest_path(local)
        out.append(SourceDigest(name, src.path, str(local.resolve()), digest, n_files, n_bytes))
    return out


def log_dataset_inputs(mlflow, digests: list[SourceDigest], weights: dict[str, float]) -> None:
    """Record each source as an MLflow dataset input (context `train`) with its digest, path and weight."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    for d in digests:
        if d.location is None:
            source = HTTPDatasetSource(url=f"https://huggingface.co/datasets/{d.path}")
        else:
            source = resolve_dataset_source(Path(d.location).as_uri())
        tags = {
            "config_path": d.path,
            "files": str(d.n_files),
            "bytes": str(d.n_bytes),
            "weight": str(weights.get(d.name, 1.0)),
        }
        _log_input(mlflow, MetaDataset(source=source, name=d.name, digest=d.digest), tags)


def _log_input(mlflow, dataset, tags: dict, attempts: int = 4) -> None:
    """log_input, retried: sweep points logging the same data set at once race to insert its row (the loser
    gets a unique-constraint error, and finds the row on the next attempt). Lineage never fails a run: the
    digest is also a tag (`data.<name>.digest`), so a last failure is only a warning."""
    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context="train", tags=tags)
            return
        except Exception as e:  # noqa: BLE001 - MlflowException wrapping the store's IntegrityError
            if attempt == attempts - 1:
                log.warning("could not record data set %s as an MLflow input: %s", dataset.name, e)
                return
            time.sleep(0.5 * (attempt + 1))
