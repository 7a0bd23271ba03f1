"""The policy (actor) role of on-policy RL: generation, log-probs, the policy update, and the weights it
hands to vLLM.

Generation: ``rollout.backend=hf`` runs transformers' generate on the trained module;
``rollout.backend=vllm`` with ``placement=colocated`` gives each rank its own in-process ``VLLMEngine``
(tensor_parallel_size=1) on the rank's GPU, asleep while the trainers run and refreshed by
``sync_weights`` after every update. With ``placement=separate`` the engines are ``RolloutWorker`` actors and
rank 0 broadcasts the weights to them (``init_weight_sync``, ``broadcast_weights``; driven by
``rlhf.workers.rollout.EngineFleet``).

Weights for vLLM are the trained module's parameters under their Hugging Face names: gathered one decoder
layer at a time under ZeRO-3, and with LoRA merged on the fly (W + scale * B @ A, the trained parameters are
left untouched).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rlhf.config.algo import RLConfig
from rlhf.config.engine import EngineConfig
from rlhf.config.model import ModelConfig
from rlhf.config.rollout import RolloutConfig
from rlhf.plan import Plan
from rlhf.workers.base import RankWorker


@dataclass
class RoleSpec:
    """Typed slices an on-policy role needs."""

    algo: RLConfig
    model: ModelConfig
    engine: EngineConfig
    rollout: RolloutConfig
    plan: Plan
    seed: int
    output_dir: str
    resume: bool
    # Optimizer steps over the whole run (for the learning-rate schedule).
    total_updates: int = 1
    # placement.mode: with rollout.backend=vllm, "colocated" puts an engine inside each policy rank.
    placement_mode: str = "colocated"
    # vLLM's max_model_len (prompt + response tokens); None: the model's own limit.
    max_model_len: Optional[int] = None
    # vLLM sleep level while training: 1 keeps the weights in host memory, 2 drops them (they are replaced
    # after every update anyway).
    sleep_level: int = 2


class TrainedRole(RankWorker):
    """Shared by the policy and the critic: a DeepSpeed engine, micro-batched passes, state save/resume."""

    ckpt_name = "policy"

    def __init__(self, rank: int, world_size: int, spec: RoleSpec):
        super().__init__(rank, world_size)
        self.spec = spec
        self.plan = spec.plan

    def _device_batch(self, batch: dict) -> dict:
        dev = self.engine.device
        return {k: (v.to(dev) if hasattr(v, "to") else v) for k, v in batch.items()}

    def _micro(self, batch: dict):
        from rlhf.training.sequences import split_rows

        n = len(batch["sequences"])
        m = min(self.plan.micro_batch_per_gpu, n)
        return split_rows(batch, n // m) if n % m == 0 else [batch]

    def save_state(self, step: int) -> None:
        """Each trained role writes its shards into checkpoints/step_N/<role> (published by the driver)."""
        from rlhf.engines import checkpoint as ck

        tmp = ck.temp_sibling(Path(self.spec.output_dir) / "checkpoints" / ck.step_dir_name(step)) / self.ckpt_name
        tmp.mkdir(parents=True, exist_ok=True)
        self.engine.save_state(tmp)

    def load_state(self, ckpt_dir: str) -> None:
        self.engine.load_state(Path(ckpt_dir) / self.ckpt_name)


class PolicyWorker(TrainedRole):
    ckpt_name = "policy"

    def setup(self, master_addr: str, master_port: int) -> dict:
        from rlhf.engines.deepspeed import TrainEngine
        from rlhf.models.loading import load_causal_lm, load_tokenizer

        t0 = time.time()
        s, plan = self.spec, self.plan
        self.init_dist(master_addr, master_port, plan.device)
        self.seed_everything(s.seed + self.rank)
        self.tokenizer = load_tokenizer(s.model, padding_side="left")
        model = load_causal_lm(s.model, dtype=plan.dtype, device=plan.device)
        self.engine = TrainEngine(
            model, train=s.algo, engine=s.engine, micro_batch=plan.micro_batch_per_gpu,
            grad_accum=plan.grad_accum, world_size=plan.world_size, dtype=plan.dtype, total_steps=s.total_updates,
        )
        self.eos_ids = _eos_ids(self.engine.module, self.tokenizer)
        self.vllm = None
        self.sync_group = None
        info = {"setup_s": time.time() - t0, "params": sum(p.numel() for p in model.parameters())}
        if s.rollout.backend == "vllm" and s.placement_mode == "colocated":
            t1 = time.time()
            self.vllm = self._start_vllm()
            info["vllm_start_s"] = time.time() - t1
        return info

    def _start_vllm(self):
        """This rank's in-process engine, loading the same checkpoint the trainer started from."""
        from rlhf.engines.vllm_engine import VLLMEngine
        from rlhf.models.loading import resolve_path

        s = self.spec
        if s.rollout.tensor_parallel_size != 1:
            raise ValueError(
                f"rollout.tensor_parallel_size={s.rollout.tensor_parallel_size} with placement=colocated: each "
                "policy rank hosts one engine on its own GPU (tensor_parallel_size=1); use placement=separate "
                "for sharded engines"
            )
        if s.model.lora.load_in_4bit:
            raise ValueError(
                "rollout.backend=vllm with model.lora.load_in_4bit=true: the engine needs merged 16-bit weights, "
                "which a 4-bit base cannot give back exactly; use rollout=hf or model.lora.load_in_4bit=false"
            )
        return VLLMEngine(
            resolve_path(s.model.name_or_path), dtype=_VLLM_DTYPES[self.plan.dtype],
            gpu_memory_utilization=s.rollout.gpu_memory_utilization, tensor_parallel_size=1,
            enable_sleep=s.rollout.enable_sleep, enforce_eager=s.rollout.enforce_eager, seed=s.seed + self.rank,
            max_model_len=s.max_model_len, device=self.plan.device,
        )

    # ---- generation ---------------------------------------------------------------------------------
    def generate(self, prompts: dict, seed: int, greedy: bool = False) -> dict:
        """Sample one response per row of `prompts` (rows already repeated samples_per_prompt times).

        prompts: input_ids [N, P] left-padded, attention_mask [N, P]. Returns sequences [N, P+R] with R =
        rollout.max_new_tokens (right-padded), action_mask [N, R], rollout_logps [N, R] (temperature-scaled,
        from the generation's own logits; untempered when greedy), finish_reason (N of "stop"/"length") and
        generate_s. ``greedy`` decodes with temperature 0 (consistency checks).
        """
        if self.vllm is not None:
            return self._generate_vllm(prompts, greedy)
        return self._generate_hf(prompts, seed, greedy)

    def _generate_vllm(self, prompts: dict, greedy: bool) -> dict:
        from rlhf.workers.rollout import generations_to_batch, unpadded_prompts

        ro = self.spec.rollout
        t0 = time.time()
        if self.vllm.weights_discarded:  # slept at level 2 with no update since (e.g. eval before a step)
            self.sync_weights()
        self.vllm.wake_up()
        t1 = time.time()
        gens = self.vllm.generate(
            unpadded_prompts(prompts["input_ids"], prompts["attention_mask"]), n=1,
            temperature=0.0 if greedy else ro.temperature, top_p=ro.top_p, top_k=ro.top_k,
            max_new_tokens=ro.max_new_tokens, ignore_eos=ro.ignore_eos,
            stop_token_ids=None if ro.ignore_eos else sorted(self.eos_ids),
        )
        t2 = time.time()
        if ro.enable_sleep:
            # Free the engine's memory before the log-prob passes and training.
            self.vllm.sleep(self.spec.sleep_level)
        batch = generations_to_batch(prompts["input_ids"], prompts["attention_mask"], gens, ro.max_new_tokens,
                                     self.tokenizer.pad_token_id)
        batch["generate_s"] = t2 - t1
        batch["sleep_wake_s"] = (t1 - t0) + (time.time() - t2)
        return batch

    def _generate_hf(self, prompts: dict, seed: int, greedy: bool) -> dict:
        import torch

        from rlhf.training.sequences import action_mask_from

        ro = self.spec.rollout
        module = self.engine.module
        module.eval()
        torch.manual_seed(seed + self.rank)
        ids, am = prompts["input_ids"], prompts["attention_mask"]
        seqs, masks, logps = [], [], []
        pad = self.tokenizer.pad_token_id
        t0 = time.time()
        for i in range(0, len(ids), ro.generate_batch):
            x = ids[i:i + ro.generate_batch].to(self.engine.device)
            a = am[i:i + ro.generate_batch].to(self.engine.device)
            with torch.no_grad():
                out = module.generate(
                    input_ids=x, attention_mask=a, do_sample=ro.temperature > 0 and not greedy,
                    temperature=max(ro.temperature, 1e-5), top_p=ro.top_p, top_k=ro.top_k if ro.top_k > 0 else 0,
                    max_new_tokens=ro.max_new_tokens, min_new_tokens=ro.max_new_tokens if ro.ignore_eos else 0,
                    pad_token_id=pad, eos_token_id=sorted(self.eos_ids), use_cache=True,
                    return_dict_in_generate=True, output_logits=True,
                )
            resp = out.sequences[:, x.shape[1]:]
            logits = torch.stack(out.logits, dim=1).float()
            temperature = 1.0 if greedy else max(ro.temperature, 1e-5)
            lp = torch.log_softmax(logits / temperature, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
            r = resp.shape[1]
            if r < ro.max_new_tokens:
                fill = ro.max_new_tokens - r
                resp = torch.nn.functional.pad(resp, (0, fill), value=pad)
                lp = torch.nn.functional.pad(lp, (0, fill), value=0.0)
            mask = action_mask_from(resp, set() if ro.ignore_eos else self.eos_ids, pad)
            seqs.append(torch.cat([x, resp], 1).cpu())
            masks.append(mask.cpu())
            logps.append((lp * mask).cpu())
        module.train()
        action_mask = torch.cat(masks)
        sequences = torch.cat(seqs)
        p = ids.shape[1]
        attention = torch.cat([am, action_mask], 1)
        # "length" when the response filled max_new_tokens without an EOS (as vLLM reports it).
        ended = [bool(set(row[m.bool()].tolist()) & self.eos_ids) and not ro.ignore_eos
                 for row, m in zip(sequences[:, p:], action_mask)]
        return {
            "sequences": sequences, "attention_mask": attention, "action_mask": action_mask,
            "rollout_logps": torch.cat(logps), "prompt_len": p, "generate_s": time.time() - t0,
            "finish_reason": ["stop" if e else "length" for e in ended],
        }

    # ---- weights for vLLM -----------------------------------------------------------------------------
    def sync_weights(self) -> dict:
        """Colocated engine: load the current weights into this rank's engine (waking its weights first).
        Every rank calls it (ZeRO-3 gathers are collective). Returns the seconds it took."""
        if self.vllm is None:
            return {}
        t0 = time.time()
        self.vllm.wake_up(["weights"])
        self.vllm.update_weights(_rollout_weights(self.engine.module, self.spec.engine.zero_stage == 3))
        return {"weight_sync_s": time.time() - t0}

    def rollout_weight_specs(self) -> list:
        """(HF name, wire dtype, full shape) of every tensor ``broadcast_weights`` sends, in order."""
        from rlhf.models.loading import torch_dtype

        wire = str(torch_dtype(self.plan.dtype)).removeprefix("torch.")
        return [(name, wire, tuple(getattr(p, "ds_shape", p.shape))) for name, p, _ in _rollout_params(self.engine.module)]

    def init_weight_sync(self, master_addr: str, port: int, world_size: int, backend: str) -> None:
        """Rank 0 hosts the weight-sync group with the separate rollout engines (blocks until all joined)."""
        from rlhf.engines.vllm_engine import WeightSyncGroup

        if self.rank != 0:
            raise RuntimeError(f"init_weight_sync on policy rank {self.rank}: only rank 0 sends weights")
        self.sync_group = WeightSyncGroup(master_addr, port, 0, world_size, backend)

    def broadcast_weights(self) -> dict:
        """Separate engines: rank 0 broadcasts the current weights; other ranks only join the ZeRO-3 gathers."""
        from rlhf.engines.vllm_engine import broadcast_weights
        from rlhf.models.loading import torch_dtype

        t0 = time.time()
        weights = _rollout_weights(self.engine.module, self.spec.engine.zero_stage == 3)
        if self.rank == 0:
            if self.sync_group is None:
                raise RuntimeError("broadcast_weights before init_weight_sync: the driver must connect the engines")
            sent = broadcast_weights(self.sync_group, weights, dtype=torch_dtype(self.plan.dtype))
        else:
            sent = 0
            for _ in weights:  # drive the generator: its ZeRO-3 gathers need every rank
                pass
        return {"weight_sync_s": time.time() - t0, "weight_sync_bytes": sent}

    def score_greedy(self, batch: dict) -> dict:
        """Teacher-forced log-probs [N, R] of the batch's response tokens at temperature 1, and the largest
        log-prob [N, R] at each position (equal when the token is the trainer's greedy choice)."""
        import torch

        from rlhf.training.sequences import position_ids

        self.engine.eval()
        chosen, best = [], []
        with torch.no_grad():
            for mb in self._micro(batch):
                mb = self._device_batch(mb)
                p = mb["prompt_len"]
                out = self.engine(input_ids=mb["sequences"], attention_mask=mb["attention_mask"],
                                  position_ids=position_ids(mb["attention_mask"]), use_cache=False)
                lp = torch.log_softmax(out.logits[:, p - 1:-1].float(), -1)
                chosen.append(lp.gather(-1, mb["sequences"][:, p:].unsqueeze(-1)).squeeze(-1).cpu())
                best.append(lp.max(-1).values.cpu())
        self.engine.train()
        return {"logps": torch.cat(chosen), "top_logps": torch.cat(best)}

    def close(self) -> None:
        if self.sync_group is not None:
            self.sync_group.close()
            self.sync_group = None
        if self.vllm is not None:
            self.vllm.shutdown()
            self.vllm = None
        super().close()

    # ---- log-probs and update -------------------------------------------------------------------------
    def logps(self, batch: dict) -> "torch.Tensor":
        """Log-probs [N, R] of the batch's response tokens at rollout.temperature."""
        import torch

        from rlhf.training.sequences import response_logps

        self.engine.eval()
        outs = []
        with torch.no_grad():
            for mb in self._micro(batch):
                mb = self._device_batch(mb)
                lp, _, _ = response_logps(self.engine, mb["sequences"], mb["attention_mask"], mb["prompt_len"],
                                          self.spec.rollout.temperature)
                outs.append(lp.float().cpu())
        self.engine.train()
        return torch.cat(outs)

    def train(self, minibatches: list[dict]) -> dict:
        """One optimizer step per minibatch; each holds this rank's rows and the step's global counts."""
        from rlhf.algos.policy_loss import entropy_bonus, kl_loss, ppo_policy_loss
        from rlhf.training.sequences import response_logps

        a = self.spec.algo
        scale = self.plan.grad_accum * self.plan.world_size
        sums: dict[str, float] = defaultdict(float)
        info: dict = {}
        t0 = time.time()
        for mini in minibatches:
            norm = dict(num_tokens=mini["num_tokens"], num_seqs=mini["num_seqs"], max_len=mini["max_len"])
            for mb in self._micro(mini):
                mb = self._device_batch(mb)
                need_ent = a.entropy_coef > 0 or True
                logp, ent, aux = response_logps(self.engine, mb["sequences"], mb["attention_mask"], mb["prompt_len"],
                                                self.spec.rollout.temperature, with_entropy=need_ent)
                mask = mb["action_mask"].float()
                loss, stats = ppo_policy_loss(
                    logp, mb["old_logps"], mb["advantages"], mask, clip_low=a.clip_low, clip_high=a.clip_high,
                    dual_clip=a.dual_clip, agg=a.loss_agg, **norm,
                )
                sums["train/policy_loss"] += float(loss.detach())
                if a.kl_coef > 0 and a.kl_in == "loss":
                    kl = kl_loss(logp, mb["ref_logps"], mask, kind=a.kl_estimator, agg=a.loss_agg, **norm)
                    loss = loss + mb["kl_coef"] * kl
                    sums["train/kl_loss"] += float(kl)
                if a.entropy_coef > 0:
                    loss = loss + entropy_bonus(ent, mask, coef=a.entropy_coef, agg=a.loss_agg, **norm)
                if aux is not None:
                    coef = getattr(self.engine.module.config, "router_aux_loss_coef", 0.0)
                    loss = loss + coef * aux / scale
                self.engine.backward(loss * scale)
                info = self.engine.step() or info
                frac = mask.sum().item() / max(norm["num_tokens"], 1)
                sums["train/entropy"] += float((ent * mask).sum() / max(norm["num_tokens"], 1))
                for k in ("clip_frac", "approx_kl"):
                    if k in stats:
                        sums[f"train/{k}"] += float(stats[k]) * frac
        n = max(len(minibatches), 1)
        out = {k: v / n for k, v in sums.items()}
        if self.rank == 0:
            out.update({f"train/{k}": v for k, v in info.items()})
            out["timing/train_policy_s"] = time.time() - t0
        return out

    # ---- export --------------------------------------------------------------------------------------
    def save_model(self, final_dir: str, run_info: dict) -> Optional[str]:
        self.tokenizer.padding_side = "right"
        path = self.engine.save_hf(Path(final_dir), self.tokenizer, extra_files={"rlhf_run.json": run_info})
        self.tokenizer.padding_side = "left"
        return str(path) if path else None


_VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _rollout_params(module) -> list:
    """(HF name, parameter, LoRA layer or None) of each weight vLLM loads, in a fixed order.

    Plain models: ``named_parameters()`` (tied weights once). PEFT models: the base model's parameters,
    ``...q_proj.base_layer.weight`` renamed ``...q_proj.weight`` and paired with its LoRA layer (merged when
    sent); the adapters themselves are not sent.
    """
    if not hasattr(module, "peft_config"):
        return [(name, p, None) for name, p in module.named_parameters()]
    from peft.tuners.lora import LoraLayer

    base = module.get_base_model()
    lora = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    out = []
    for name, p in base.named_parameters():
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".base_layer.")
        if owner and owner in lora:
            out.append((f"{owner}.{leaf}", p, lora[owner] if leaf == "weight" else None))
        else:
            out.append((name, p, None))
    return out


def _layer_key(name: str) -> str:
    """The decoder layer a parameter belongs to ("model.layers.3" for "model.layers.3.mlp.up_proj.weight");
    parameters outside numbered layers are their own group."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return name


def _merged(param, layer):
    """W + sum of the active adapters' deltas (scale * B @ A) for a LoRA layer's base weight."""
    weight = param.detach()
    if layer is None:
        return weight
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A:
            weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
    return weight


def _rollout_weights(module, zero3: bool):
    """Yield (HF name, tensor) for vLLM, one decoder layer at a time.

    Under ZeRO-3 each layer's parameters (adapters included) are gathered for the duration of that layer and
    the yielded tensors are copies: vLLM may hold a layer's tensors until the layer is complete, and the
    gathered storage is released on leaving the context. Every rank must run this generator to the end.
    """
    import itertools

    entries = _rollout_params(module)
    if not zero3:
        for name, p, layer in entries:
            yield name, _merged(p, layer)
        return
    import deepspeed

    for _, group in itertools.groupby(entries, key=lambda e: _layer_key(e[0])):
        group = list(group)
        params = [p for _, p, _ in group]
        for _, _, layer in group:
            if layer is not None:
                params.extend(q for n, q in layer.named_parameters() if "lora_" in n)
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            for name, p, layer in group:
                yield name, _merged(p, layer).clone()


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    gen = getattr(model, "generation_config", None)
    e = getattr(gen, "eos_token_id", None)
    if isinstance(e, int):
        ids.add(e)
    elif isinstance(e, (list, tuple)):
        ids.update(e)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
