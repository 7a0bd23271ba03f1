"""Schema of the `data` group: sources (a weighted mixture), keys, templates, lengths, bad-row policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING


@dataclass
class SourceConfig:
    """One data source of a mixture.

    `path` forms: a local file (`.json`, `.jsonl`, `.parquet`), a directory of such files, `json@./dir` (a
    directory holding `train.*`/`test.*` files, OpenRLHF style), `asset:<name>` for a data set shipped with the
    package (`asset:sft`, `asset:preference`, `asset:prompts`, ...), or a Hugging Face data set name
    (`org/name`, loaded with `datasets.load_dataset` when a hub is reachable).
    """

    path: str = MISSING
    # Relative sampling weight inside the mixture; weights are normalized over sources.
    weight: float = 1.0
    split: str = "train"
    # Split used for evaluation (None: no held-out evaluation from this source).
    eval_split: Optional[str] = None
    # Keys of a row. `input_key` holds a string prompt or a list of chat messages.
    input_key: str = "prompt"
    output_key: Optional[str] = "response"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    label_key: str = "label"
    # Extra columns handed to reward functions (e.g. `answer` for exact-match rewards).
    fields: List[str] = field(default_factory=list)
    max_samples: Optional[int] = None


@dataclass
class DataConfig:
    sources: Dict[str, SourceConfig] = field(default_factory=dict)
    # Python format string with one `{}` wrapping a string prompt (ignored when a chat template is applied).
    input_template: Optional[str] = None
    # Render prompts/messages with the tokenizer's chat template.
    apply_chat_template: bool = True
    # Max tokens of prompt + response (SFT, pairs); longer samples are truncated from the right.
    max_len: int = 512
    # Max prompt tokens; longer prompts are truncated from the left (keeps the question's end).
    prompt_max_len: int = 256
    # Bad rows (invalid JSON, missing key, empty text, wrong type): "skip" counts and reports them, "error" stops.
    bad_rows: str = "skip"
    # With bad_rows=skip, still stop when more than this fraction of a source is bad (a wrong key, not noise).
    max_bad_fraction: float = 0.5
    # Pack several samples into one sequence of max_len (SFT/RM/DPO); per-sample position ids and masks.
    packing: bool = False
    # Fraction of the train split held out for evaluation when a source has no eval_split.
    eval_fraction: float = 0.0
    shuffle_seed: int = 42
