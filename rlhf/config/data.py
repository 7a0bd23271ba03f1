"""Schema of the `data` group: sources (a weighted mixture), formats, templates, lengths, bad-row policy.

The short form for one data set is `data.train=<path>` (and `data.eval=<path>`, `data.format=<name>`); it
becomes a source of `data.sources` when the run starts (`rlhf.data.sources.resolve_data`). The row format is
detected from the first rows unless named; formats are listed in `rlhf/data/formats.py` (FORMATS).
"""

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
    # Configuration name of a hub data set that has several (openai/gsm8k: main).
    hub_config: Optional[str] = None
    # Row format (hh_rlhf, ultrafeedback, sharegpt, alpaca, messages, ...); None: detected from the first rows.
    format: Optional[str] = None
    # Relative sampling weight inside the mixture; weights are normalized over sources.
    weight: float = 1.0
    split: str = "train"
    # Split used for evaluation when the source has it; a source without it (a single file, a directory
    # without such files, a hub set without that split) holds out data.eval_fraction of its training rows.
    # None: no evaluation rows from this source.
    eval_split: Optional[str] = "test"
    # A separate file/directory/hub name holding the evaluation rows (wins over eval_split).
    eval_path: Optional[str] = None
    # Row keys, None: the format's own. Set on a source without `format`, they describe a `custom` format
    # (prompt in input_key, response in output_key, ...); with a format, they rename that format's keys.
    input_key: Optional[str] = None
    output_key: Optional[str] = None
    chosen_key: Optional[str] = None
    rejected_key: Optional[str] = None
    label_key: Optional[str] = None
    # Python format string with named row fields building a string prompt, e.g. "{instruction}\n\n{input}"
    # (None: data.prompt_template, else the format's own). A field left blank drops with its separator.
    prompt_template: Optional[str] = None
    # Columns handed to reward functions (empty: every scalar column of the row, plus the format's own, e.g. the
    # GSM8K answer after '####'). Listed columns are required.
    fields: List[str] = field(default_factory=list)
    max_samples: Optional[int] = None
    # Set for sources added on the command line (`+data.sources.<name>.path=...`): data.train keeps them.
    added: bool = False


@dataclass
class DataConfig:
    sources: Dict[str, SourceConfig] = field(default_factory=dict)
    # One data set without writing a source: a path as in SourceConfig.path. It replaces the preset's sources
    # (or, when the preset is one named-format source such as data=hh_rlhf, only that source's path); sources
    # added on the command line stay.
    train: Optional[str] = None
    # Held-out rows for data.train (a path); without it data.eval_fraction of the training rows are held out.
    eval: Optional[str] = None
    # Row format of data.train (None: detected).
    format: Optional[str] = None
    # The split, held-out split and hub config of data.train (or of a preset's one source), as in SourceConfig:
    # `data.train=<ultrafeedback folder> data.split=train_prefs data.eval_split=test_prefs`,
    # `data.train=<gsm8k folder> data.hub_config=main`. None: the source's own.
    split: Optional[str] = None
    eval_split: Optional[str] = None
    hub_config: Optional[str] = None
    # Default prompt template of every source (see SourceConfig.prompt_template); applied before the chat
    # template, to string prompts.
    prompt_template: Optional[str] = None
    # ShareGPT speaker names -> chat roles, merged over the defaults (human/user -> user, gpt/assistant/model ->
    # assistant, system -> system), e.g. +data.role_map.observation=tool.
    role_map: Dict[str, str] = field(default_factory=dict)
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
    # Fraction of the train split held out for evaluation when a source has no eval split, at most
    # eval_max_rows rows (0: no held-out evaluation for such sources).
    eval_fraction: float = 0.05
    eval_max_rows: int = 500
    # Rows of each source read by the check before any process starts (format, keys, lengths, rewards).
    check_rows: int = 256
    shuffle_seed: int = 42
