"""Load tokenizers and models from Hugging Face names, local paths, or `tiny:<arch>` (built offline)."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional

from rlhf.config.model import ModelConfig

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"


def resolve_path(name_or_path: str) -> str:
    """`tiny:<arch>` -> the cached directory of that tiny model (built on first use); anything else as is."""
    if name_or_path.startswith(TINY_PREFIX):
        from rlhf.models.tiny import tiny_model_dir

        return str(tiny_model_dir(name_or_path[len(TINY_PREFIX) :]))
    from rlhf.models.arch import missing_path_message

    # A local path that does not exist is a typo or a wrong directory, not an offline hub.
    missing = missing_path_message(name_or_path, "name_or_path")
    if missing:
        raise FileNotFoundError(missing)
    return name_or_path


def torch_dtype(dtype: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def attn_implementation(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


# A tokenizer's own files; a folder with none of them would load as an empty tokenizer built from config.json.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json", "spiece.model")


def missing_tokenizer_message(path: str, key: str) -> Optional[str]:
    """What to do when the local folder `path` holds no tokenizer files (a config.json-only copy), else None."""
    folder = Path(path).expanduser()
    if not folder.is_dir() or any((folder / f).is_file() for f in TOKENIZER_FILES):
        return None
    return (
        f"{key}={path}: the folder holds no tokenizer ({', '.join(TOKENIZER_FILES[:3])}, ... are missing). Copy "
        "the model's tokenizer files into it, or set model.tokenizer=<hub id or folder with them>"
    )


def missing_weights_message(path: str, key: str) -> Optional[str]:
    """What to do when the local folder `path` holds no weight files (a config.json-only copy), else None."""
    folder = Path(path).expanduser()
    if not folder.is_dir() or any(any(folder.glob(p)) for p in ("*.safetensors", "*.bin", "*.pth", "*.pt")):
        return None
    return (
        f"{key}={path}: the folder holds no weights (no *.safetensors or *.bin file): copy the model's weight "
        "files into it (a folder with only config.json can be planned, mode=plan, but not trained)"
    )


def load_tokenizer(cfg: ModelConfig, padding_side: str = "right"):
    from transformers import AutoTokenizer

    path = resolve_path(cfg.tokenizer or cfg.name_or_path)
    missing = missing_tokenizer_message(path, "model.tokenizer" if cfg.tokenizer else "model.name_or_path")
    if missing:
        raise OSError(missing)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise OSError(
            f"could not load the tokenizer of model.name_or_path={cfg.name_or_path!r} ({e}). Offline? Point "
            "model.name_or_path at a local directory, or use model=tiny."
        ) from e
    tok.padding_side = padding_side
    if cfg.chat_template:
        tok.chat_template = cfg.chat_template
    if tok.pad_token is None:
        # Llama-3 ships no pad token; padding positions are masked out everywhere, so eos is safe as pad.
        tok.pad_token = tok.eos_token
    return tok


def _common_kwargs(cfg: ModelConfig, dtype: str, device: str) -> dict:
    kw = dict(
        dtype=torch_dtype(dtype),
        trust_remote_code=cfg.trust_remote_code,
        attn_implementation=attn_implementation(cfg.attn_implementation, device),
    )
    if cfg.lora.load_in_4bit:
        import torch
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if dtype == "bf16" else torch.float32
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    return kw


def load_causal_lm(cfg: ModelConfig, *, dtype: str, device: str, trainable: bool = True):
    """A causal LM, with LoRA/QLoRA adapters when model.lora.rank > 0 and the model is trained."""
    from transformers import AutoModelForCausalLM

    path = resolve_path(cfg.name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **_common_kwargs(cfg, dtype, device))
    except OSError as e:
        raise OSError(
            f"could not load model.name_or_path={cfg.name_or_path!r} ({e}). Offline? Use a local path or model=tiny."
        ) from e
    if cfg.moe_aux_loss_coef > 0 and hasattr(model.config, "output_router_logits"):
        model.config.output_router_logits = True
        model.config.router_aux_loss_coef = cfg.moe_aux_loss_coef
    model.config.use_cache = False
    if trainable and cfg.lora.rank > 0:
        model = apply_lora(model, cfg)
    return model


def load_sequence_classifier(
    cfg: ModelConfig,
    *,
    dtype: str,
    device: str,
    path: Optional[str] = None,
    trainable: bool = True,
    pad_token_id: Optional[int] = None,
):
    """A one-logit sequence classifier (reward model); from a causal LM the score head is freshly initialized."""
    from transformers import AutoModelForSequenceClassification

    src = resolve_path(path or cfg.name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1, **_common_kwargs(cfg, dtype, device))
    if pad_token_id is not None:
        # HF pools the score at the last non-pad token; it must know which id pads.
        model.config.pad_token_id = pad_token_id
    model.config.use_cache = False
    if trainable and cfg.lora.rank > 0:
        model = apply_lora(model, cfg, task_type="SEQ_CLS")
    return model


def score_texts(model, tokenizer, texts: list[str], batch_size: int, device):
    """Scalar scores [N] (float32, CPU) of a one-logit sequence classifier for full conversation texts, batched."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, add_special_tokens=False
            )
            logits = model(
                input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
            ).logits
            out.append(logits[:, 0].float().cpu())
    return torch.cat(out)


def apply_lora(model, cfg: ModelConfig, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.lora.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lcfg = LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type=task_type,
    )
    model = get_peft_model(model, lcfg)
    if _is_first_rank():
        print(lora_summary(model, cfg.lora.rank, list(cfg.lora.target_modules)), flush=True)
    return model


def lora_summary(model, rank: int, targets: list) -> str:
    """`lora: r=8 on [q_proj, v_proj]: 40,960 of 2,531,456 parameters trainable (1.62%)`."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    pct = 100.0 * trainable / max(total, 1)
    return f"lora: r={rank} on [{', '.join(targets)}]: {trainable:,} of {total:,} parameters trainable ({pct:.2f}%)"


def _is_first_rank() -> bool:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
