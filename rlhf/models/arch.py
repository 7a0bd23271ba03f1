"""The architecture numbers of a model, read without loading it: config.json and the safetensors headers.

The planner needs hidden size, layers, heads, KV heads, MLP width, vocabulary, experts and the parameter count
(rlhf/memory.py). `find_arch(name_or_path)` looks, in order, at:

1. a local Hugging Face folder (`./mymodel`, `/data/llama`): its config.json, and the parameter count summed
   from the shapes in each `*.safetensors` header (8-byte little-endian header length, then a JSON header;
   no tensor data is read);
2. the Hugging Face cache for a hub id (`org/name`), offline (`huggingface_hub` cache lookup, no network);
3. the preset of conf/model/ whose `name_or_path` is that hub id (or whose file name it is: `llama3_8b`).

A local path that does not exist is reported as "not found" with the working directory; a hub id found
nowhere names the three places looked at and what to do. Pure standard library (huggingface_hub only for the
cache lookup): imports without torch.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

# transformers model types whose causal-LM forward ends with ``logits = lm_head(hidden)`` and nothing after it
# (no soft-capping or logit scaling): the head can run inside the log-prob computation instead
# (engine.fused_lm_head, rlhf/training/sequences.py), and the planner counts its chunks instead of the logits.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3"})

CONF_MODEL_DIR = Path(__file__).resolve().parents[2] / "conf" / "model"
# Safetensors element counts are summed from shapes; the dtype does not matter for a parameter count.
_HEADER_LIMIT = 100 * 1024 * 1024


class ArchError(ValueError):
    """A model whose architecture cannot be found, with where it was looked for and the fix."""


@dataclass(frozen=True)
class Arch:
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    params_b: float
    num_experts: int = 1
    experts_per_token: int = 1
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    # Where the numbers came from (a folder, the HF cache, conf/model/<preset>.yaml).
    source: str = ""


ARCH_FIELDS = tuple(f.name for f in fields(Arch) if f.name != "source")


def from_config_json(config: dict, params: Optional[int], source: str) -> Arch:
    """Arch from a transformers config.json dict; params from the weights when known, else from the shape."""
    cfg = dict(config.get("text_config") or {}, **{k: v for k, v in config.items() if k != "text_config"})
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if k not in cfg]
    if missing:
        raise ArchError(f"{source}: config.json has no {', '.join(missing)}; is it a causal language model?")
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts") or 1)
    arch = Arch(
        model_type=str(cfg.get("model_type", "llama")),
        hidden_size=hidden,
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        # The MoE width is per expert (Mixtral's intermediate_size, Qwen-MoE's moe_intermediate_size).
        intermediate_size=int(
            (cfg.get("moe_intermediate_size") if experts > 1 else None)
            or cfg.get("intermediate_size")
            or (8 * hidden) // 3
        ),
        vocab_size=int(cfg["vocab_size"]),
        params_b=0.0,
        num_experts=experts,
        experts_per_token=int(cfg.get("num_experts_per_tok") or 1) if experts > 1 else 1,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096),
        source=source,
    )
    count = params if params else shape_params(arch)
    return _replace(arch, params_b=count / 1e9)


def shape_params(a: Arch) -> int:
    """Llama/Qwen2/Mixtral count from the shape: attention with grouped KV heads, SwiGLU per expert, embeddings."""
    head_dim = a.hidden_size // a.num_heads
    attn = 2 * a.hidden_size * a.hidden_size + 2 * a.hidden_size * a.num_kv_heads * head_dim
    mlp = 3 * a.hidden_size * a.intermediate_size * a.num_experts
    embeddings = a.vocab_size * a.hidden_size * (1 if a.tie_word_embeddings else 2)
    return a.num_layers * (attn + mlp) + embeddings


def safetensors_header(path: Path) -> dict:
    """The JSON header of one .safetensors file: {tensor name: {dtype, shape, data_offsets}, __metadata__}."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ArchError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > _HEADER_LIMIT:
            raise ArchError(f"{path}: safetensors header of {n} bytes; the file is damaged or not safetensors")
        return json.loads(f.read(n))


def safetensors_params(folder: Path) -> Optional[int]:
    """Parameters stored in a folder's *.safetensors files (None when it has none), from the headers alone."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        for name, entry in safetensors_header(path).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            total += count
    return total


def from_folder(folder: Path, source: Optional[str] = None) -> Arch:
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        raise ArchError(
            f"{folder} has no config.json: model.name_or_path must be a Hugging Face model folder (config.json "
            "and *.safetensors, as save_pretrained writes them)"
        )
    return from_config_json(json.loads(config.read_text()), safetensors_params(folder), source or str(folder))


def looks_like_path(name_or_path: str) -> bool:
    """A local path rather than a hub id: absolute, ./ ../ ~, a Windows drive, or more than one '/'."""
    s = name_or_path
    return (
        s.startswith(("/", "./", "../", "~", ".\\"))
        or s in (".", "..")
        or s.count("/") > 1
        or (len(s) > 1 and s[1] == ":")
    )


def missing_path_message(name_or_path: str, key: str = "model.name_or_path") -> Optional[str]:
    """ "not found" with the working directory for a local path that does not exist (not a hub problem)."""
    if not looks_like_path(name_or_path):
        return None
    local = Path(os.path.expanduser(name_or_path))
    if local.exists():
        return None
    return (
        f"{key}={name_or_path}: not found: {local.absolute()} does not exist (relative paths start from the "
        f"working directory, {Path.cwd()}); point {key} at a Hugging Face model folder (config.json + "
        "*.safetensors) or a hub id (org/name)"
    )


def hf_cache_folder(repo_id: str) -> Optional[Path]:
    """The cached snapshot folder of a hub model holding config.json, without touching the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - a malformed id is simply not cached
        return None
    return Path(found).parent if isinstance(found, str) else None


def preset_values(name: str) -> dict:
    """The values a conf/model preset file sets, with those of the presets it includes (`- tiny@_here_`)."""
    import yaml

    data = yaml.safe_load((CONF_MODEL_DIR / f"{name}.yaml").read_text()) or {}
    merged: dict = {}
    for entry in data.pop("defaults", []) or []:
        if isinstance(entry, str) and entry.endswith("@_here_") and not entry.startswith("/"):
            merged.update(preset_values(entry[: -len("@_here_")]))
    merged.update(data)
    return merged


@functools.lru_cache(maxsize=1)
def presets() -> dict[str, dict]:
    """name -> values of every conf/model preset (read once per process; do not modify)."""
    return {path.stem: preset_values(path.stem) for path in sorted(CONF_MODEL_DIR.glob("*.yaml"))}


def preset_arch(name_or_path: str) -> Optional[Arch]:
    """The numbers of the conf/model preset named `name_or_path` (file name or its hub id), if any."""
    for stem, data in presets().items():
        path = CONF_MODEL_DIR / f"{stem}.yaml"
        if name_or_path not in (path.stem, data.get("name_or_path")):
            continue
        if not all(data.get(k) is not None for k in ("hidden_size", "num_layers", "num_heads", "vocab_size")):
            continue
        values = {k: data[k] for k in ARCH_FIELDS if data.get(k) is not None}
        values.setdefault("num_kv_heads", values["num_heads"])
        values.setdefault("intermediate_size", (8 * values["hidden_size"]) // 3)
        values.setdefault("model_type", "llama")
        partial = Arch(**{**values, "params_b": values.get("params_b", 0.0)}, source=f"conf/model/{path.name}")
        return partial if partial.params_b else _replace(partial, params_b=shape_params(partial) / 1e9)
    return None


def preset_name_or_path(name: str) -> Optional[str]:
    """The `name_or_path` a conf/model preset file loads (`llama3_8b` -> meta-llama/Meta-Llama-3-8B)."""
    path = CONF_MODEL_DIR / f"{name}.yaml"
    if "/" in name or not path.is_file():
        return None
    return preset_values(name).get("name_or_path")


def find_arch(name_or_path: str, key: str = "model.name_or_path") -> Arch:
    """The architecture of a local folder, a cached hub model or a preset; ArchError says where it looked."""
    if name_or_path.startswith("tiny:"):
        found = preset_arch(name_or_path)
        if found is None:
            raise ArchError(
                f"{key}={name_or_path}: no conf/model preset builds this tiny model (see conf/model/tiny*.yaml)"
            )
        return found
    local = Path(os.path.expanduser(name_or_path))
    if local.is_dir():
        return from_folder(local)
    missing = missing_path_message(name_or_path, key)
    if missing or local.exists():
        raise ArchError(missing or f"{key}={name_or_path} is a file; point {key} at a Hugging Face model folder")
    cached = hf_cache_folder(name_or_path)
    if cached is not None:
        return from_folder(cached, source=f"Hugging Face cache ({cached})")
    preset = preset_arch(name_or_path)
    if preset is not None:
        return preset
    raise ArchError(
        f"{key}={name_or_path}: the architecture is unknown offline: no local folder of that name, no copy in the "
        "Hugging Face cache ($HF_HOME/hub) and no conf/model preset loads it. Download it once "
        f"(huggingface-cli download {name_or_path} config.json), point {key} at a local folder, or give the "
        "numbers (model.params_b, model.hidden_size, model.num_layers, model.num_heads, model.num_kv_heads, "
        "model.intermediate_size, model.vocab_size)"
    )


def _replace(a: Arch, **changes) -> Arch:
    from dataclasses import replace

    return replace(a, **changes)
