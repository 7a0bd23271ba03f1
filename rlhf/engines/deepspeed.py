"""DeepSpeed engines for trained and frozen roles: config, optimizer, schedule, state and HF export."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Optional

from rlhf.config.algo import TrainConfig
from rlhf.config.engine import EngineConfig
from rlhf.engines import checkpoint as ckpt
from rlhf.quiet import DEEPSPEED_PRINTS, stdout_without


def ds_config(
    engine: EngineConfig,
    *,
    micro_batch: int,
    grad_accum: int,
    world_size: int,
    dtype: str,
    max_grad_norm: float,
    train: bool = True,
) -> dict:
    """The DeepSpeed JSON config for one role (train or frozen inference)."""
    zero: dict[str, Any] = {"stage": engine.zero_stage if train or engine.zero_stage == 3 else 0}
    if engine.zero_stage == 3:
        # Needed to write 16-bit HF weights from partitioned parameters.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        zero["stage3_param_persistence_threshold"] = 10000
    if train and engine.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if engine.offload_params and engine.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum if train else 1,
        "train_batch_size": micro_batch * (grad_accum if train else 1) * world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {"enabled": dtype == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer synchronizes the device at every forward and step once two steps have run:
        # a host sync per micro-batch that keeps the CPU from queueing ahead. The run times its phases itself.
        "timers": {"throughput": {"enabled": False}},
        "zero_allow_untested_optimizer": True,
    }
    if train:
        cfg["gradient_clipping"] = max_grad_norm
        if dtype == "bf16" and engine.zero_stage > 0:
            # Accumulate gradients in fp32 across micro-batches: bf16 accumulation loses small updates. DeepSpeed
            # has no ZeRO-0 optimizer for bf16 weights with fp32 accumulation (it raises "unsupported mix"), so
            # ZeRO-0 keeps its bf16 data-parallel path.
            cfg["data_types"] = {"grad_accum_dtype": "fp32"}
    return _merge(cfg, engine.deepspeed_overrides)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in (extra or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def lr_lambda(total_steps: int, warmup_ratio: float, schedule: str, min_lr_ratio: float):
    """Multiplier of the base learning rate at optimizer step s: linear warmup, then cosine/linear/constant."""
    warmup = int(math.ceil(total_steps * warmup_ratio))

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total_steps <= warmup:
            return 1.0
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        if schedule == "linear":
            return 1.0 - (1.0 - min_lr_ratio) * progress
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


class TrainEngine:
    """A trained model wrapped by DeepSpeed: forward, backward, step, state save/load, HF export.

    Built from the role's plan (``TrainEngine.for_role``): its micro-batch, accumulation and data-parallel
    ranks are that role's own (a critic on 4 GPUs next to an actor on 8 accumulates twice as much)."""

    @classmethod
    def for_role(
        cls,
        model,
        role,
        *,
        train: TrainConfig,
        engine: EngineConfig,
        dtype: str,
        total_steps: int,
        lr: Optional[float] = None,
    ) -> TrainEngine:
        """The engine of a trained role; ``role`` is its ``rlhf.plan.RolePlan``."""
        if not role.grad_accum:
            raise ValueError(f"role {role.role} has no training batch in the plan (grad_accum=0): it is frozen")
        return cls(
            model,
            train=train,
            engine=engine,
            micro_batch=role.micro_batch_per_gpu,
            grad_accum=role.grad_accum,
            world_size=role.processes,  # ranks x ring attention: DeepSpeed averages over every process
            dtype=dtype,
            total_steps=total_steps,
            lr=lr,
        )

    def __init__(
        self,
        model,
        *,
        train: TrainConfig,
        engine: EngineConfig,
        micro_batch: int,
        grad_accum: int,
        world_size: int,
        dtype: str,
        total_steps: int,
        lr: Optional[float] = None,
    ):
        import deepspeed
        import torch

        self.engine_cfg = engine
        self.dtype = dtype
        if engine.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        # Empty groups are left out: DeepSpeed drops them from the optimizer, and a LambdaLR built with one
        # lambda per group then fails at its first step (LoRA trains only matrices, so no_decay is empty).
        groups = [
            g
            for g in ({"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]
        ]
        base_lr = lr if lr is not None else train.lr
        betas = tuple(train.adam_betas)
        if engine.offload_optimizer:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(groups, lr=base_lr, betas=betas)
        else:
            fused = torch.cuda.is_available()
            optimizer = torch.optim.AdamW(groups, lr=base_lr, betas=betas, fused=fused)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(total_steps, train.warmup_ratio, train.lr_scheduler, train.min_lr_ratio)
        )
        config = ds_config(
            engine,
            micro_batch=micro_batch,
            grad_accum=grad_accum,
            world_size=world_size,
            dtype=dtype,
            max_grad_norm=train.max_grad_norm,
        )
        with stdout_without(*DEEPSPEED_PRINTS):
            self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
            )
        # Resume reads DeepSpeed's state files without unpickling arbitrary objects.
        from rlhf.engines.safe_load import restrict_loading

        restrict_loading(self.ds)
        self.grad_accum = grad_accum
        self.world_size = world_size
        self.micro_batch = micro_batch
        from rlhf.training.sequences import HeadMode

        # How log-probs leave the LM head in the objectives (engine.fused_lm_head; rlhf/training/sequences.py).
        self.head_mode = HeadMode.of(engine, "cuda" if torch.cuda.is_available() else "cpu")

    @property
    def loss_scale(self) -> float:
        """What a globally normalized loss is multiplied by before ``backward``: DeepSpeed divides by the
        accumulation steps and averages over ranks; undoing both keeps the gradient that of the global loss."""
        return float(self.grad_accum * self.world_size)

    @property
    def module(self):
        return self.ds.module

    @property
    def device(self):
        return self.ds.device

    def train(self):
        self.ds.train()

    def eval(self):
        self.ds.eval()

    def __call__(self, *args, **kwargs):
        return self.ds(*args, **kwargs)

    def backward(self, loss) -> None:
        self.ds.backward(loss)

    def step(self) -> dict:
        """Optimizer step at the accumulation boundary; returns grad norm and learning rate then."""
        boundary = self.ds.is_gradient_accumulation_boundary()
        self.ds.step()
        if not boundary:
            return {}
        norm = self.ds.get_global_grad_norm()
        out = {"lr": float(self.scheduler.get_last_lr()[0])}
        if norm is not None:
            out["grad_norm"] = float(norm)
        return out

    @property
    def global_steps(self) -> int:
        return int(self.ds.global_steps)

    # ---- state for resume --------------------------------------------------------------------------
    def save_state(self, tmp_dir: Path) -> None:
        """Every rank writes its shard into tmp_dir (the caller publishes it after a barrier)."""
        self.ds.save_checkpoint(str(tmp_dir), tag="state", save_latest=False)

    def load_state(self, ckpt_dir: Path) -> None:
        path, _ = self.ds.load_checkpoint(str(ckpt_dir), tag="state", load_module_strict=True)
        if path is None:
            raise RuntimeError(f"could not load DeepSpeed state from {ckpt_dir}/state; delete it or set resume=false")

    # ---- export --------------------------------------------------------------------------------------
    def full_state_dict(self) -> Optional[dict]:
        """The full 16/32-bit state dict on rank 0 (None elsewhere); every rank must call it."""
        import torch.distributed as dist

        if self.engine_cfg.zero_stage == 3:
            sd = self.ds._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.ds.module.state_dict()
        rank = dist.get_rank() if dist.is_initialized() else 0
        return sd if rank == 0 else None

    def save_hf(self, final_dir: Path, tokenizer=None, extra_files: Optional[dict] = None) -> Optional[Path]:
        """Write the model in Hugging Face format (safetensors + tokenizer) atomically; rank 0 writes."""
        import torch.distributed as dist

        sd = self.full_state_dict()
        rank = dist.get_rank() if dist.is_initialized() else 0
        if rank == 0:
            save_pretrained_atomic(self.ds.module, Path(final_dir), tokenizer, state_dict=sd, extra_files=extra_files)
        if dist.is_initialized():
            dist.barrier()
        return Path(final_dir) if rank == 0 else None


def save_pretrained_atomic(module, final_dir: Path, tokenizer=None, state_dict=None, extra_files=None) -> None:
    """save_pretrained into a temporary sibling, then rename into place. LoRA adapters are merged."""
    import torch

    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.temp_sibling(final_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    model = module
    if hasattr(module, "peft_config"):
        # Keep the adapter, and write merged full weights so from_pretrained needs no peft.
        module.save_pretrained(str(tmp / "adapter"))
        import copy

        model = copy.deepcopy(module).merge_and_unload()
        if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
            # QLoRA: the merged model is still quantized; write it in the compute dtype so that loading it needs
            # neither peft nor bitsandbytes (and vLLM can serve it).
            model = model.dequantize()
        state_dict = None
    if state_dict is not None:
        state_dict = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    config = getattr(model, "config", None)
    router = getattr(config, "output_router_logits", False)
    try:
        # The router aux loss is a training setting: a saved MoE model generates with router logits off (its
        # loss over a KV-cached step does not fit the full-length mask).
        if router:
            config.output_router_logits = False
        with torch.no_grad():
            model.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
    finally:
        if router:
            config.output_router_logits = True
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    for name, content in (extra_files or {}).items():
        (tmp / name).write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    ckpt.publish_dir(tmp, final_dir)


def build_frozen(model, *, engine: EngineConfig, world_size: int, dtype: str, micro_batch: int):
    """A frozen model for reference/reward roles: ZeRO-3 partitioned when the trainer uses ZeRO-3."""
    import torch

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if engine.zero_stage != 3:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return model.to(device)
    import deepspeed

    config = ds_config(
        engine,
        micro_batch=micro_batch,
        grad_accum=1,
        world_size=world_size,
        dtype=dtype,
        max_grad_norm=1.0,
        train=False,
    )
    with stdout_without(*DEEPSPEED_PRINTS):
        eng, *_ = deepspeed.initialize(model=model, config=config)
    eng.eval()
    return eng
