"""Tiny random-init models of real architectures, built offline and cached, for CPU tests and laptop runs.

``tiny_model_dir("llama")`` returns a folder that the ordinary loaders read, so the code under test takes the
same path as with a hub checkpoint::

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    path = tiny_model_dir("qwen2")
    policy = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    reward = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)  # new random score head

The last line works for every arch in ``TINY_SPECS`` (Llama, Qwen2 and Mixtral all have a
``*ForSequenceClassification`` head that pools the last non-pad token, found through ``pad_token_id``), so no
separate reward-model folder exists.

The tokenizer is a byte-level BPE trained on the shipped corpus (``rlhf/assets/data/corpus.txt``) in well under
a second, splitting digits one by one like Qwen2 and Llama 3 so arithmetic stays learnable, with a ChatML chat
template. A folder is keyed by arch and a hash of the spec, the corpus, this file's source and the
transformers/tokenizers versions, so changing any of them builds a new folder; building takes a few seconds
(mostly imports) and happens once per cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"  # also bos; ChatML text never needs a bos, so the tokenizer does not prepend one
IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, EOS_TOKEN)  # ids 0, 1, 2 in this order
MAX_POSITIONS = 1024

# Qwen2's pre-tokenizer pattern: contractions, letter runs, single digits, punctuation runs, whitespace.
_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# ChatML as in Qwen2, without its default system turn (so short prompts stay short).
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('chat roles are system, user and assistant; got ' ~ message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ message['content'] ~ '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

BUILD_MARKER = "build.json"  # written last inside a build; its presence means the folder is complete
# Shipped data a warmed model trains on (under rlhf/assets/data); their bytes are part of the cache key.
# sft_pairs: the chat format and answer style; zero_warm: the default RL task's questions answered with a random
# digit (its format, not its rule: RL has to find that).
WARM_FILES = ("sft_pairs.jsonl", "zero_warm.jsonl")


def _default_corpus() -> Path:
    from rlhf.data.synthetic import asset_path

    return asset_path("data", "corpus.txt")


def build_tokenizer(
    corpus_path: str | Path | None = None, vocab_size: int = 2048, padding_side: str = "right"
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus_path`` (default: the shipped corpus) and wrap it for transformers.

    ``vocab_size`` is an upper bound: training stops earlier when no pair occurs twice (the shipped corpus gives
    about 1,200 tokens); ``len(tokenizer)`` is the real size. Special tokens: ``<|endoftext|>`` (id 0, pad and
    bos, never prepended), ``<|im_start|>`` (1), ``<|im_end|>`` (2, eos). ``padding_side`` is "right" or "left"
    and can also be passed to ``AutoTokenizer.from_pretrained`` later.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} cannot hold the 256 byte tokens and {len(SPECIAL_TOKENS)} specials")
    corpus = Path(corpus_path) if corpus_path is not None else _default_corpus()
    if not corpus.is_file():
        raise FileNotFoundError(f"tokenizer corpus {corpus} does not exist; pass a plain-text file as corpus_path")

    tokenizer = Tokenizer(models.BPE())
    # NFC as in Qwen2: AutoTokenizer loads a qwen2 folder as Qwen2Tokenizer, which forces NFC, and all archs
    # must tokenize alike.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown token needed
        show_progress=False,
    )
    tokenizer.train([str(corpus)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=PAD_TOKEN,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        additional_special_tokens=[IM_START],
        chat_template=CHATML_TEMPLATE,
        padding_side=padding_side,
        model_max_length=MAX_POSITIONS,
    )


_TOKENIZER_FIELDS = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")


@dataclass(frozen=True)
class TinySpec:
    """A random-init model: ``model_type`` is a transformers config name ("llama", "qwen2", "mixtral"),
    ``config`` the keyword arguments of its config class (vocabulary size and special-token ids are filled in
    from the tokenizer), ``vocab_size`` the BPE bound and ``seed`` the init seed."""

    model_type: str
    config: Mapping[str, Any]
    vocab_size: int = 2048
    seed: int = 0
    # Optimizer steps of next-token training on the shipped chat data after init (0: random weights). A
    # warmed model answers in the data's style, so RL rewards start from a signal instead of noise.
    warm_steps: int = 0

    def __post_init__(self) -> None:
        clashes = sorted(set(_TOKENIZER_FIELDS) & set(self.config))
        if clashes:
            raise ValueError(
                f"TinySpec.config sets {clashes}, which come from the tokenizer; remove them "
                f"(the BPE size bound is TinySpec.vocab_size)"
            )
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))  # immutable, safe to share

    def with_config(self, **overrides: Any) -> TinySpec:
        """A copy with some config keys changed, e.g. ``TINY_SPECS["llama"].with_config(num_hidden_layers=1)``."""
        return dataclasses.replace(self, config={**self.config, **overrides})

    def to_json(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "config": dict(self.config),
            "vocab_size": self.vocab_size,
            "seed": self.seed,
            "warm_steps": self.warm_steps,
        }


_COMMON: dict[str, Any] = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention, as in every current model family
    max_position_embeddings=MAX_POSITIONS,
    rms_norm_eps=1e-6,
    initializer_range=0.02,
    tie_word_embeddings=False,
    dtype="float32",
)

# About 2.5M (llama, qwen2) and 2.9M (mixtral) parameters with the shipped corpus' vocabulary.
TINY_SPECS: Mapping[str, TinySpec] = MappingProxyType(
    {
        "llama": TinySpec("llama", {**_COMMON, "intermediate_size": 1280}),
        "qwen2": TinySpec("qwen2", {**_COMMON, "intermediate_size": 1280}),
        # The llama model after a short chat warm-up on the shipped Q&A pairs (WARM_FILES; zero-rule questions
        # only with random answers): the starting point of the tiny RL runs.
        "llama_chat": TinySpec("llama", {**_COMMON, "intermediate_size": 1280}, warm_steps=200),
        "mixtral": TinySpec(
            "mixtral",
            {
                **_COMMON,
                "intermediate_size": 384,  # per expert
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "router_aux_loss_coef": 0.02,  # Mixtral-8x7B's value; used when output_router_logits=True
                "output_router_logits": False,
            },
        ),
    }
)


def _resolve_spec(arch: str | TinySpec) -> tuple[str, TinySpec]:
    if isinstance(arch, TinySpec):
        return arch.model_type, arch
    if arch not in TINY_SPECS:
        raise KeyError(f"unknown tiny arch {arch!r}; choose one of {sorted(TINY_SPECS)} or pass a TinySpec")
    return arch, TINY_SPECS[arch]


def build_tiny_model(spec: TinySpec, out_dir: str | Path, corpus_path: str | Path | None = None) -> None:
    """Write tokenizer, config, generation config and seeded random weights for ``spec`` into ``out_dir``.

    No caching and no locking: ``tiny_model_dir`` adds both. The global torch RNG is left as it was.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    tokenizer = build_tokenizer(corpus_path, vocab_size=spec.vocab_size)
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config = AutoConfig.for_model(spec.model_type, **spec.config, **ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"]
    )
    if spec.warm_steps:
        _warm_up(model, tokenizer, spec.warm_steps, spec.seed)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _warm_up(model, tokenizer, steps: int, seed: int, batch: int = 16, lr: float = 2e-3) -> None:
    """Next-token training on the shipped chat conversations (all tokens), plain torch, deterministic."""
    import random

    import torch

    # Single-turn prompt/response rows: short sequences teach the chat format and answer style fastest.
    rows = [json.loads(line) for name in WARM_FILES for line in asset_text(name).splitlines() if line.strip()]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}], tokenize=False
        )
        for r in rows
    ]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][:MAX_POSITIONS] for t in texts]
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps))
    model.train()
    threads = torch.get_num_threads()
    # Tiny matrices: one thread is fastest, and far faster than two threads on a busy 2-core machine.
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            chunk = rng.sample(encoded, batch)
            width = max(len(x) for x in chunk)
            ids = torch.full((batch, width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((batch, width), dtype=torch.long)
            for i, x in enumerate(chunk):
                ids[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    torch.set_num_threads(threads)
    model.eval()


def asset_text(rel: str) -> str:
    from rlhf.data.synthetic import asset_path

    return asset_path("data", *rel.split("/")).read_text(encoding="utf-8")


def default_cache_dir() -> Path:
    """``$RLHF_CACHE`` when set, else ``~/.cache/rlhf``."""
    return Path(os.environ.get("RLHF_CACHE") or Path.home() / ".cache" / "rlhf")


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spec_digest(spec: TinySpec, corpus_path: str | Path | None = None) -> str:
    """Hex digest of everything a build depends on: the spec, the corpus bytes, the warm-up data (warmed specs),
    this module's source and the transformers/tokenizers versions (their file formats change between releases;
    a cache may be shared)."""
    from importlib.metadata import version  # reads package metadata without importing the packages

    from rlhf.data.synthetic import asset_path

    corpus = Path(corpus_path) if corpus_path is not None else _default_corpus()
    warm = {name: _sha256_file(asset_path("data", name)) for name in WARM_FILES} if spec.warm_steps else {}
    payload = json.dumps(
        {
            "spec": spec.to_json(),
            "corpus": _sha256_file(corpus),
            "warm_data": warm,
            "code": _sha256_file(Path(__file__)),
            "versions": [version("transformers"), version("tokenizers")],
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; the kernel drops it if the holder dies, so no stale locks."""
    try:
        import fcntl
    except ImportError as err:  # Windows
        raise OSError("tiny_model_dir locks its cache with fcntl (Linux, macOS); on Windows run it under WSL") from err

    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def tiny_model_dir(
    arch: str | TinySpec = "llama", cache_dir: str | Path | None = None, corpus_path: str | Path | None = None
) -> Path:
    """Folder of a cached tiny model that ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained`` load.

    ``arch`` names an entry of ``TINY_SPECS`` or is a ``TinySpec``. The folder is
    ``<cache_dir or default_cache_dir()>/tiny/<arch>-<digest>`` and holds config.json, model.safetensors,
    generation_config.json (eos and pad ids), the tokenizer files with the chat template, and ``build.json``.

    Safe under concurrency (Ray workers, parallel pytest): one process builds under a file lock into a temp
    folder beside the target and renames it into place; the others wait on the lock and then find it built.
    """
    name, spec = _resolve_spec(arch)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    parent = root / "tiny"
    target = parent / f"{name}-{spec_digest(spec, corpus_path)[:16]}"
    if (target / BUILD_MARKER).is_file():
        return target
    parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(parent / f".{target.name}.lock"):
        if (target / BUILD_MARKER).is_file():  # another process finished while this one waited
            return target
        if target.exists():  # left by something other than this function (a rename is all or nothing)
            shutil.rmtree(target)
        for stale in parent.glob(f".{target.name}.*.tmp"):  # from a builder killed mid-way; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
        staging.chmod(0o755)  # mkdtemp makes it private; a shared cache must stay readable by others
        try:
            started = time.perf_counter()
            build_tiny_model(spec, staging, corpus_path)
            _write_marker(staging, name, spec, time.perf_counter() - started)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _write_marker(folder: Path, name: str, spec: TinySpec, seconds: float) -> None:
    import tokenizers
    import torch
    import transformers

    record = {
        "arch": name,
        "spec": spec.to_json(),
        "build_id": uuid.uuid4().hex,  # tells one build from another (cache hits keep it)
        "build_seconds": round(seconds, 3),
        "pid": os.getpid(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    (folder / BUILD_MARKER).write_text(json.dumps(record, indent=2) + "\n")


def read_build_record(model_dir: str | Path) -> dict[str, Any]:
    """The ``build.json`` of a folder made by ``tiny_model_dir`` (arch, spec, build_id, versions)."""
    path = Path(model_dir) / BUILD_MARKER
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {model_dir} was not built by rlhf.models.tiny.tiny_model_dir")
    return json.loads(path.read_text())


__all__ = [
    "CHATML_TEMPLATE",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "TINY_SPECS",
    "TinySpec",
    "build_tiny_model",
    "build_tokenizer",
    "default_cache_dir",
    "read_build_record",
    "spec_digest",
    "tiny_model_dir",
]
