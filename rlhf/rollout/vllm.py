"""vLLM engines in the policy's process (``placement=colocated``): one engine per rank on the rank's GPU,
asleep while the trainers run, refreshed from the trained module after every update. The separate-engine
path (its own GPUs, weights by broadcast) is ``rlhf.workers.rollout``; both start engines with
``engine_options``."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

from rlhf.config.rollout import RolloutConfig
from rlhf.rollout.base import Timings
from rlhf.types import PromptBatch, RolloutBatch

log = logging.getLogger(__name__)

# The plan's precision names as vLLM spells them.
VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def engine_options(
    plan, rollout: RolloutConfig, *, seed: int, tensor_parallel_size: int, enable_sleep: bool
) -> dict[str, Any]:
    """``VLLMEngine`` keyword arguments for this run's engines (the model path is passed apart)."""
    return {
        "dtype": VLLM_DTYPES[plan.dtype],
        "gpu_memory_utilization": rollout.gpu_memory_utilization,
        "tensor_parallel_size": tensor_parallel_size,
        "enable_sleep": enable_sleep,
        "enforce_eager": rollout.enforce_eager,
        "compile": rollout.compile,
        "seed": seed,
        "max_model_len": plan.seq_len or None,
        "device": plan.device,
    }


class ColocatedVLLM:
    """A policy rank's in-process engine, started from the checkpoint the trainer started from.

    ``weights`` yields (HF name, tensor) of the trained module's current weights (rlhf/rollout/weights.py)."""

    def __init__(
        self,
        model_path: str,
        options: dict[str, Any],
        rollout: RolloutConfig,
        *,
        eos_ids: set[int],
        pad_id: int,
        sleep_level: int,
        weights,
        lora_4bit: bool = False,
        side_stream: bool = False,
    ):
        from rlhf.engines.vllm_engine import VLLMEngine

        if options["tensor_parallel_size"] != 1:
            raise ValueError(
                f"rollout.tensor_parallel_size={options['tensor_parallel_size']} with placement=colocated: each "
                "policy rank hosts one engine on its own GPU (tensor_parallel_size=1); use placement=separate "
                "for sharded engines"
            )
        if lora_4bit:
            raise ValueError(
                "rollout.backend=vllm with model.lora.load_in_4bit=true: the engine needs merged 16-bit weights, "
                "which a 4-bit base cannot give back exactly; use rollout=hf or model.lora.load_in_4bit=false"
            )
        self.ro, self.eos_ids, self.pad_id, self.sleep_level = rollout, eos_ids, pad_id, sleep_level
        self.weights = weights
        # Colocated overlap: generate calls come on their own thread while the rank trains on the default
        # stream; a stream of their own lets the GPU run both (rlhf.rollout.backends.overlaps_in_policy).
        self.side_stream = side_stream and options.get("device", "cuda") == "cuda"
        self._stream: Optional[Any] = None
        self._loaded: Optional[Any] = None  # CUDA event after the last weight load (side stream only)
        self._stream_warned = False
        # One engine call at a time: vLLM locks nothing, and with the overlap its calls come from two threads
        # (the loop already orders them; this keeps a misordered call from corrupting the engine). Reentrant:
        # generate may load weights first.
        self._lock = threading.RLock()
        t0 = time.time()
        self.engine: Optional[Any] = VLLMEngine(model_path, **options)
        if self.side_stream:
            import torch

            self._stream = torch.cuda.Stream()
            # The engine started on this thread's stream, the trainer's; its runner may have kept that stream.
            self.engine.run_on_stream(self._stream)
        self.start_s = time.time() - t0

    def generate(self, prompts: PromptBatch, *, seed: int, greedy: bool) -> tuple[RolloutBatch, Timings]:
        with self._lock:
            return self._generate(prompts, seed=seed, greedy=greedy)

    def _generate(self, prompts: PromptBatch, *, seed: int, greedy: bool) -> tuple[RolloutBatch, Timings]:
        from rlhf.workers.rollout import generations_to_batch

        ro, engine = self.ro, self.engine
        assert engine is not None, "generate after close"
        t0 = time.time()
        if engine.weights_discarded:  # slept at level 2 with no update since (e.g. eval before a step)
            self.load_weights()
        engine.wake_up()
        t1 = time.time()
        with self._stream_context():
            gens = engine.generate(
                prompts.unpadded(),
                n=1,
                temperature=0.0 if greedy else ro.temperature,
                top_p=ro.top_p,
                top_k=ro.top_k,
                max_new_tokens=ro.max_new_tokens,
                ignore_eos=ro.ignore_eos,
                stop_token_ids=None if ro.ignore_eos else sorted(self.eos_ids),
            )
            if self._stream is not None:
                self._check_stream()
                self._stream.synchronize()  # nothing of this generation left in flight when the weights change
        t2 = time.time()
        if ro.enable_sleep:
            # Free the engine's memory before the log-prob passes and training.
            engine.sleep(self.sleep_level)
        batch = generations_to_batch(prompts.input_ids, prompts.attention_mask, gens, ro.max_new_tokens, self.pad_id)
        return batch, {"timing/generate_engine_s": t2 - t1, "timing/sleep_wake_s": (t1 - t0) + (time.time() - t2)}

    def _check_stream(self) -> None:
        """Warn once if the engine moved the generating thread off its stream (a vLLM whose runner caches its
        stream somewhere ``pin_runner_stream`` does not know): its kernels then share the trainer's stream."""
        import torch

        now = torch.cuda.current_stream()
        if now != self._stream and not self._stream_warned:
            self._stream_warned = True
            log.warning(
                "the vLLM engine left the generation thread on CUDA stream %#x, not its own %#x: generation and "
                "training share a stream, so the overlap is lost and their kernels interleave; run without "
                "algo.async_rollout or with rollout.enable_sleep=true",
                now.cuda_stream,
                self._stream.cuda_stream,
            )

    def _stream_context(self):
        import contextlib

        if self._stream is None:
            return contextlib.nullcontext()
        import torch

        # The weights were loaded on the loading thread's stream: wait for the event recorded there.
        if self._loaded is not None:
            self._stream.wait_event(self._loaded)
        return torch.cuda.stream(self._stream)

    def load_weights(self) -> Timings:
        """Load the current weights into the engine, waking its weights first. Every policy rank calls it
        (ZeRO-3 gathers are collective)."""
        assert self.engine is not None, "load_weights after close"
        with self._lock:
            t0 = time.time()
            self.engine.wake_up(["weights"])
            self.engine.update_weights(self.weights())
            if self._stream is not None:
                import torch

                self._loaded = torch.cuda.Event()
                self._loaded.record()  # on this thread's current stream, where the copies were queued
            return {"timing/weight_sync_s": time.time() - t0}

    def sleep(self) -> None:
        with self._lock:
            if self.engine is not None and self.ro.enable_sleep:
                self.engine.sleep(self.sleep_level)

    def wake_up(self) -> None:
        with self._lock:
            if self.engine is not None:
                self.engine.wake_up()

    def close(self) -> None:
        with self._lock:
            if self.engine is not None:
                self.engine.shutdown()
                self.engine = None
