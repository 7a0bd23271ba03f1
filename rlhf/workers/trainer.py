"""The training role of offline algorithms (SFT, RM, DPO/IPO/cDPO, KTO): one Ray actor per data-parallel rank.

Each rank holds the tokenized data set (small and deterministic, so no data moves through the driver), takes
its slice of every optimizer step, and runs forward/backward through DeepSpeed. The driver only says which
step to run, collects metrics, and publishes the step checkpoints the ranks write
(rlhf/controllers/checkpoints.py).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rlhf.config.algo import TrainConfig
from rlhf.config.data import DataConfig
from rlhf.config.engine import EngineConfig
from rlhf.config.model import ModelConfig
from rlhf.plan import Plan
from rlhf.workers.base import RankWorker
from rlhf.workers.trained import StepState


@dataclass
class TrainerSpec:
    """The typed slices of the run config the training role needs."""

    algo: TrainConfig
    model: ModelConfig
    data: DataConfig
    engine: EngineConfig
    plan: Plan
    seed: int
    output_dir: str
    resume: bool


class TrainerWorker(StepState, RankWorker):
    ckpt_name = "policy"

    def __init__(self, rank: int, world_size: int, spec: TrainerSpec):
        super().__init__(rank, world_size)
        self.spec = spec
        self.plan = spec.plan

    # ---- setup ---------------------------------------------------------------------------------------
    def setup(self, master_addr: str, master_port: int) -> dict:
        from rlhf.algos.registry import get_algo
        from rlhf.data.datasets import build_dataset
        from rlhf.engines.deepspeed import TrainEngine, build_frozen
        from rlhf.models.loading import load_causal_lm, load_sequence_classifier, load_tokenizer
        from rlhf.models.ring_attention import install
        from rlhf.training.objectives import OBJECTIVES
        from rlhf.training.steps import step_counts

        t0 = time.time()
        s, plan = self.spec, self.plan
        self.init_dist(master_addr, master_port, plan.device)
        # Every rank seeds alike (offset 0 without its rank): DeepSpeed starts all replicas from rank 0's weights.
        self.seed_everything(plan.rank_seed("actor", 0))
        self.role_plan = plan.role("actor")
        self._setup_ring(plan.device)
        self.algo_spec = get_algo(s.algo.name)
        self.objective = OBJECTIVES[self.algo_spec.objective]
        self.tokenizer = load_tokenizer(s.model)
        task = self.algo_spec.task
        data = s.algo.conditioned(s.data) if hasattr(s.algo, "conditioned") else s.data  # csft: score in prompt
        tag = getattr(s.algo, "step_tag", None)  # prm: the step placeholder
        margin = getattr(s.algo, "margin_key", None)  # rm: a per-pair margin column
        kw = dict(seed=s.seed, step_tag=tag, margin_key=margin)
        self.train_ds = build_dataset(task, data, self.tokenizer, "train", **kw)
        self.eval_ds = build_dataset(task, data, self.tokenizer, "eval", **kw)
        self.steps_per_epoch, total = step_counts(
            len(self.train_ds),
            self.role_plan.train_batch_samples,
            s.algo.epochs,
            s.algo.max_steps,
            key="algo.train_batch_samples",
            what="samples",
        )
        self.total_steps = total

        if self.algo_spec.sequence_classifier:
            model = load_sequence_classifier(
                s.model, dtype=plan.dtype, device=plan.device, pad_token_id=self.tokenizer.pad_token_id
            )
        else:
            model = load_causal_lm(s.model, dtype=plan.dtype, device=plan.device)
        if self.ring is not None:
            install(model)
        n_params = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.engine = TrainEngine.for_role(
            model, self.role_plan, train=s.algo, engine=s.engine, dtype=plan.dtype, total_steps=total
        )
        self.ref = None
        if plan.reference:
            ref_cfg = s.model
            ref_plan = plan.role("ref")
            ref_path = (ref_plan.name_or_path if ref_plan else None) or getattr(s.algo, "ref_name_or_path", None)
            if ref_path:
                from dataclasses import replace

                ref_cfg = replace(s.model, name_or_path=ref_path)
            ref = load_causal_lm(ref_cfg, dtype=plan.dtype, device=plan.device, trainable=False)
            if self.ring is not None:
                install(ref)
            self.ref = build_frozen(
                ref,
                engine=s.engine,
                world_size=self.role_plan.processes,
                dtype=plan.dtype,
                micro_batch=self.role_plan.micro_batch_per_gpu,
            )
            # How the objectives' log-probs leave its head (rlhf/training/objectives.py head_of).
            self.ref.head_mode = self.engine.head_mode
        return {
            "total_steps": total,
            "steps_per_epoch": self.steps_per_epoch,
            "train_samples": len(self.train_ds),
            "eval_samples": len(self.eval_ds),
            "train_data": self.train_ds.summary(),
            "eval_data": self.eval_ds.summary() if len(self.eval_ds) else "",
            "params": n_params,
            "trainable_params": n_train,
            "setup_s": time.time() - t0,
        }

    def _setup_ring(self, device: str) -> None:
        """Ring attention (model.ring_attn_size): the ranks of one ring take the same samples (data-parallel rank
        rank // ring) and split each packed row; their metrics are divided by the ring size, since each rank
        of a ring computes the whole row's loss from the gathered log-probs."""
        from rlhf.models.ring_attention import setup_ring

        size = self.role_plan.ring_attn_size
        self.ring = setup_ring(size, self.spec.model.ring_head_stride, device)
        self.dp_rank, self.dp_size = self.rank // size, self.role_plan.dp_ranks

    def _ring_share(self, sums: dict) -> dict:
        size = self.role_plan.ring_attn_size
        return {k: v / size for k, v in sums.items()} if size > 1 else dict(sums)

    # ---- batches -------------------------------------------------------------------------------------
    def _step_indices(self, step: int) -> tuple[list[list[int]], list[int]]:
        """This rank's micro-batches of global step `step` (deterministic, so resume needs only the step)."""
        from rlhf.training.steps import step_items

        r = self.role_plan
        chunk = step_items(len(self.train_ds), r.train_batch_samples, self.steps_per_epoch, self.spec.seed, step)
        per_rank = r.micro_batch_per_gpu * r.grad_accum
        mine = chunk[self.dp_rank * per_rank : (self.dp_rank + 1) * per_rank]
        m = r.micro_batch_per_gpu
        return [mine[i * m : (i + 1) * m] for i in range(r.grad_accum)], chunk

    def _collate(self, ds, idx: list[int]) -> dict:
        from rlhf.training.batches import collate_for_task

        return collate_for_task(
            self.algo_spec.task,
            [ds[i] for i in idx],
            self.tokenizer,
            packing=self.spec.data.packing,
            attn_impl=self._attn_impl(),
            dtype=self._dtype(),
        )

    def _attn_impl(self) -> str:
        return getattr(self.engine.module.config, "_attn_implementation", "sdpa")

    def _dtype(self):
        from rlhf.models.loading import torch_dtype

        return torch_dtype(self.plan.dtype)

    def _counts(self, ds, idx: list[int]):
        from rlhf.training.batches import loss_tokens
        from rlhf.training.objectives import StepCounts

        return StepCounts(tokens=float(sum(loss_tokens(ds[i]) for i in idx)), samples=float(len(idx)))

    def _prepass(self, ds, order: list[int], positions, counts):
        """The objective's step-wide values (objectives.PREPASSES, e.g. KTO's reference point) in `counts`."""
        from rlhf.training.batches import collate_for_task
        from rlhf.training.objectives import PREPASSES

        fn = PREPASSES.get(self.algo_spec.objective)
        if fn is None:
            return counts

        def collate(samples: list[dict]) -> dict:
            kw = dict(packing=self.spec.data.packing, attn_impl=self._attn_impl(), dtype=self._dtype())
            return self._to_device(collate_for_task("sft", samples, self.tokenizer, **kw))

        return fn(
            self.engine,
            [ds[i] for i in order],
            list(positions),
            counts,
            ref_model=self.ref,
            collate=collate,
            micro_batch=self.role_plan.micro_batch_per_gpu,
            algo=self.spec.algo,
        )

    def _to_device(self, batch: dict) -> dict:
        dev = self.engine.device
        return {k: (v.to(dev) if hasattr(v, "to") else v) for k, v in batch.items()}

    # ---- steps ---------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        t0 = time.time()
        self.engine.train()
        micro, chunk = self._step_indices(step)
        counts = self._counts(self.train_ds, chunk)
        per_rank = self.role_plan.micro_batch_per_gpu * self.role_plan.grad_accum
        mine = range(self.dp_rank * per_rank, (self.dp_rank + 1) * per_rank)
        counts = self._prepass(self.train_ds, chunk, mine, counts)
        scale = self.engine.loss_scale
        sums: dict[str, float] = defaultdict(float)
        info: dict[str, float] = {}
        for idx in micro:
            batch = self._to_device(self._collate(self.train_ds, idx))
            loss, metrics = self.objective(
                self.engine,
                batch,
                counts,
                ref_model=self.ref,
                algo=self.spec.algo,
                micro_batches=scale,
                tokenizer=self.tokenizer,
            )
            self.engine.backward(loss * scale)
            info = self.engine.step() or info
            for k, v in metrics.items():
                sums[k] += float(v)
        out = self._ring_share(sums)
        if self.rank == 0:
            out.update({f"train/{k}": v for k, v in info.items()})
            out["timing/step_s"] = time.time() - t0
        return out

    def evaluate(self) -> dict:
        import torch

        from rlhf.training.objectives import StepCounts

        n = len(self.eval_ds)
        if n == 0:
            return {}
        self.engine.eval()
        idx = list(range(n))
        counts = StepCounts(tokens=float(sum(self._loss_tokens(i) for i in idx)), samples=float(n))
        mine = idx[self.dp_rank :: self.dp_size]
        m = self.role_plan.micro_batch_per_gpu
        sums: dict[str, float] = defaultdict(float)
        with torch.no_grad():
            counts = self._prepass(self.eval_ds, idx, mine, counts)
            for i in range(0, len(mine), m):
                batch = self._to_device(self._collate(self.eval_ds, mine[i : i + m]))
                _, metrics = self.objective(
                    self.engine,
                    batch,
                    counts,
                    ref_model=self.ref,
                    algo=self.spec.algo,
                    micro_batches=1,
                    tokenizer=self.tokenizer,
                )
                for k, v in metrics.items():
                    sums["eval/" + k.split("/", 1)[1]] += float(v)
        return self._ring_share(sums)

    def _loss_tokens(self, i: int) -> int:
        from rlhf.training.batches import loss_tokens

        return loss_tokens(self.eval_ds[i])

    def save_model(self, final_dir: str, run_info: dict) -> Optional[str]:
        extra = {"rlhf_run.json": run_info}
        if self.algo_spec.task == "prm":  # what reward=prm needs to score with the saved model
            a = self.spec.algo
            extra["prm.json"] = {"placeholder_token": a.placeholder_token, "reward_tokens": list(a.reward_tokens)}
        path = self.engine.save_hf(Path(final_dir), self.tokenizer, extra_files=extra)
        return str(path) if path else None
