"""Generation from a saved model in this process, for `rlhf.generate` and `rlhf.eval`: vLLM when it is
installed and asked for (or `auto` on a GPU), transformers' generate otherwise. Both are `GenerateFn`s of
rlhf/evaluation/driver.py: rows in, `Sampling.n` completions a row out."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence

from rlhf.evaluation.driver import Completion, Sampling
from rlhf.rollout.hf import no_router_loss

log = logging.getLogger(__name__)

BACKENDS = ("auto", "hf", "vllm")


def pick_backend(backend: str, device: str) -> str:
    """`auto` -> vllm on a GPU machine with vLLM installed, else hf; an explicit choice is checked."""
    if backend not in BACKENDS:
        raise ValueError(f"generate.backend={backend!r}: choose one of {list(BACKENDS)}")
    has_vllm = importlib.util.find_spec("vllm") is not None
    if backend == "auto":
        return "vllm" if has_vllm and device == "cuda" else "hf"
    if backend == "vllm" and not has_vllm:
        raise ValueError(
            "generate.backend=vllm but vLLM is not installed: `pip install -e .[vllm]` (GPU) or "
            "`make test-vllm` (CPU build), or use generate.backend=hf"
        )
    return backend


def eos_ids(model, tokenizer) -> list[int]:
    """The ids that end a response: the generation config's eos ids and the tokenizer's eos."""
    ids = set()
    e = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(e, int):
        ids.add(e)
    elif isinstance(e, (list, tuple)):
        ids.update(e)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


class HFGenerate:
    """transformers' generate on a model loaded for inference; prompts are left-padded in batches."""

    def __init__(self, model_cfg, tokenizer, *, device: str, dtype: str, batch_size: int = 64):
        import torch

        from rlhf.models.loading import load_causal_lm

        self.tok, self.device, self.batch_size = tokenizer, device, max(1, batch_size)
        self.model = load_causal_lm(model_cfg, dtype=dtype, device=device, trainable=False).to(device).eval()
        self.model.config.use_cache = True
        self.eos = eos_ids(self.model, tokenizer)
        self._torch = torch

    def __call__(self, rows: Sequence[dict], sampling: Sampling) -> list[list[Completion]]:
        torch = self._torch
        pad = self.tok.pad_token_id
        ids = [list(r["input_ids"]) for r in rows for _ in range(sampling.n)]
        texts: list[Completion] = []
        torch.manual_seed(sampling.seed)
        for i in range(0, len(ids), self.batch_size):
            chunk = ids[i : i + self.batch_size]
            width = max(len(x) for x in chunk)
            x = torch.full((len(chunk), width), pad, dtype=torch.long)
            am = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, row in enumerate(chunk):
                x[j, width - len(row) :] = torch.tensor(row)
                am[j, width - len(row) :] = 1
            kwargs = dict(do_sample=False)
            if not sampling.greedy:
                kwargs = dict(
                    do_sample=True,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=sampling.top_k if sampling.top_k > 0 else 0,
                )
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=x.to(self.device),
                    attention_mask=am.to(self.device),
                    max_new_tokens=sampling.max_new_tokens,
                    pad_token_id=pad,
                    eos_token_id=self.eos,
                    **kwargs,
                    **no_router_loss(self.model),
                )
            for resp in out[:, width:].tolist():
                texts.append(self._completion(resp, sampling.max_new_tokens))
        return [texts[i * sampling.n : (i + 1) * sampling.n] for i in range(len(rows))]

    def _completion(self, resp: list[int], max_new_tokens: int) -> Completion:
        stop = next((t for t, tok in enumerate(resp) if tok in self.eos), None)
        kept = resp[: stop + 1] if stop is not None else resp
        if stop is None:  # pads after an early finish of the batch's other rows
            kept = [t for t in kept if t != self.tok.pad_token_id]
        text = self.tok.decode(kept, skip_special_tokens=True)
        return Completion(text, len(kept), "stop" if stop is not None or len(kept) < max_new_tokens else "length")


class VLLMGenerate:
    """A vLLM engine (rlhf/engines/vllm_engine.py) on the saved model."""

    def __init__(
        self,
        path: str,
        tokenizer,
        *,
        dtype: str,
        max_model_len: int,
        seed: int,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        enforce_eager: bool = False,
        compile: bool = True,
    ):
        from rlhf.engines.vllm_engine import VLLMEngine

        self.tok = tokenizer
        self.engine = VLLMEngine(
            path,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_sleep=False,
            enforce_eager=enforce_eager,
            compile=compile,
            seed=seed,
            max_model_len=max_model_len,
        )
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def __call__(self, rows: Sequence[dict], sampling: Sampling) -> list[list[Completion]]:
        gens = self.engine.generate(
            [list(r["input_ids"]) for r in rows],
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_new_tokens=sampling.max_new_tokens,
            stop_token_ids=self.eos,
        )
        out: list[list[Completion]] = [[] for _ in rows]
        for g in gens:
            out[g.prompt_index].append(
                Completion(
                    self.tok.decode(g.response_ids, skip_special_tokens=True), len(g.response_ids), g.finish_reason
                )
            )
        return out

    def close(self) -> None:
        self.engine.shutdown()


def build_generate(cfg, tokenizer, backend: str, batch_size: int = 64):
    """The GenerateFn for `cfg.model` on the machine of `cfg.hw` (a run config composed from conf/)."""
    from rlhf.models.loading import resolve_path
    from rlhf.rollout.vllm import VLLM_DTYPES

    device = "cuda" if cfg.hw.gpus_per_node * cfg.hw.nodes > 0 else "cpu"
    dtype = cfg.engine.dtype if cfg.engine.dtype != "auto" else ("bf16" if device == "cuda" and cfg.hw.bf16 else "fp32")
    chosen = pick_backend(backend, device)
    if chosen == "vllm":
        ro = cfg.rollout
        return VLLMGenerate(
            resolve_path(cfg.model.name_or_path),
            tokenizer,
            dtype=VLLM_DTYPES[dtype],
            max_model_len=cfg.data.prompt_max_len + max(ro.max_new_tokens, 1) * 4,
            # No training plan here: the rollout settings the user left unset get one engine
            # on one GPU, and most of its memory (nothing trains beside it).
            seed=cfg.seed,
            tensor_parallel_size=ro.tensor_parallel_size or 1,
            gpu_memory_utilization=ro.gpu_memory_utilization or 0.85,
            enforce_eager=ro.enforce_eager,
            compile=ro.compile,
        )
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"hw={cfg.hw.name} has GPUs but torch sees none here; use hw=cpu on this machine")
    return HFGenerate(cfg.model, tokenizer, device=device, dtype=dtype, batch_size=batch_size)
