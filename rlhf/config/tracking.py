"""Schema of the `tracking` group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class TrackingConfig:
    # mlflow or none.
    backend: str = "mlflow"
    # None: $MLFLOW_TRACKING_URI, else a local sqlite store under ./mlruns (no server needed).
    tracking_uri: Optional[str] = None
    experiment: str = "rlhf"
    run_name: Optional[str] = None
    # Upload the final model directory as an artifact (else only its path is recorded).
    log_model: bool = True
    log_system_metrics: bool = False
