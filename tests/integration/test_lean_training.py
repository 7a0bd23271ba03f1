"""The lean training pass on the real policy worker (DeepSpeed on CPU, in this process): token-budget and packed
micro-batches train exactly as the plan's fixed ones, truncated importance sampling is logged (ratio 1 when
the rollout's log-probs are the trainer's), and GSPO runs end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rlhf.config.preflight import compose_config
from rlhf.engines.dist import free_port
from rlhf.plan import resolve_plan
from rlhf.training.experience import minibatches
from rlhf.types import Experience, PromptBatch
from rlhf.workers.policy import PolicyWorker
from rlhf.workers.spec import RoleSpec

BASE = ["tracking=none", "algo=grpo", "algo.kl_coef=0", "rollout.max_new_tokens=12"]


def _worker(tmp: Path, *overrides: str) -> PolicyWorker:
    cfg = OmegaConf.to_object(compose_config([f"output_dir={tmp}", *BASE, *overrides]))
    plan = resolve_plan(cfg)
    spec = RoleSpec(
        algo=cfg.algo, model=cfg.model, engine=cfg.engine, rollout=cfg.rollout, plan=plan, output_dir=str(tmp)
    )
    w = PolicyWorker(0, 1, spec)
    w.setup("127.0.0.1", free_port())
    return w


def _experience(w: PolicyWorker, rollout_shift: float = 0.0) -> Experience:
    """32 sampled rows of varied prompt and response lengths, the worker's own log-probs as old_logps, and
    random advantages; rollout_logps = old_logps - rollout_shift on real tokens."""
    tok = w.tokenizer
    texts = [f"what is {i} * {i % 5}? " + "x " * (i % 7) for i in range(8)]
    ids = [tok(t)["input_ids"] for t in texts for _ in range(4)]
    batch, _ = w.generate(PromptBatch.left_padded(ids, tok.pad_token_id), seed=1)
    batch = batch.trimmed()
    old = w.logps(batch)
    mask = batch.action_mask.float()
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(len(batch), 1, generator=g).expand_as(mask) * mask
    return Experience(
        sequences=batch.sequences,
        attention_mask=batch.attention_mask,
        action_mask=batch.action_mask,
        old_logps=old,
        advantages=adv.contiguous(),
        returns=torch.zeros_like(mask),
        prompt_len=batch.prompt_len,
        rollout_logps=(old - rollout_shift) * mask,
    )


@pytest.fixture(scope="module")
def workers():
    """Builds in-process policy ranks; one process group serves them all (DeepSpeed caches it), so only the
    last one is closed."""
    made: list = []

    def make(tmp: Path, *overrides: str) -> PolicyWorker:
        made.append(_worker(tmp, *overrides))
        return made[-1]

    yield make
    if made:
        made[-1].close()


def _train(make, tmp: Path, exp_holder: dict, *overrides: str):
    w = make(tmp, *overrides)
    if "exp" not in exp_holder:
        exp_holder["exp"] = _experience(w)
    exp = exp_holder["exp"]
    old = w.logps(exp)
    minis = minibatches(exp, train_batch_samples=w.plan.train_batch_samples, update_epochs=1, seed=3)
    stats = w.train(minis, log_entropy=True)
    after = {k: v.detach().clone() for k, v in w.engine.module.state_dict().items()}
    return stats, after, old


def test_token_budget_and_packed_micro_batches_train_as_the_fixed_ones(workers, tmp_path: Path):
    holder: dict = {}
    fixed, w_fixed, old_fixed = _train(workers, tmp_path / "fixed", holder)
    exp = holder["exp"]
    lengths = exp.attention_mask.sum(-1)
    assert lengths.min() < lengths.max(), "rows of one length would not test the binning"
    # 16 rows per optimizer step, 2 x 8 fixed micro-batches; a budget of 120 tokens makes uneven bins.
    dyn, w_dyn, old_dyn = _train(workers, tmp_path / "dyn", holder, "algo.max_tokens_per_micro=120")
    packed, w_packed, old_packed = _train(
        workers, tmp_path / "packed", holder, "algo.max_tokens_per_micro=150", "algo.pack_sequences=true"
    )
    mask = exp.action_mask.bool()
    # The log-prob pass: same numbers on real tokens.
    assert (old_dyn - old_fixed)[mask].abs().max() < 1e-5
    assert (old_packed - old_fixed)[mask].abs().max() < 1e-5
    # The update: same losses, gradient norms and weights after two optimizer steps.
    for other, weights in ((dyn, w_dyn), (packed, w_packed)):
        for k in ("train/policy_loss", "train/grad_norm", "train/entropy", "train/clip_frac"):
            assert other[k] == pytest.approx(fixed[k], rel=1e-4, abs=1e-6), k
        worst = max((weights[name] - v).abs().max().item() for name, v in w_fixed.items())
        print("largest weight difference", worst)
        assert worst < 1e-5
    # The rollout log-probs were the trainer's: every TIS weight is 1 and none is clipped.
    assert fixed["train/tis_ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert fixed["train/tis_clip_frac"] == 0.0


def test_tis_ratio_and_clipped_fraction_are_logged(workers, tmp_path: Path):
    # old - rollout = ln 3 on every real token: ratio 3 everywhere, above the cap 2 on every token.
    import math

    w = workers(tmp_path, "algo.tis_cap=2.0")
    exp = _experience(w, rollout_shift=math.log(3.0))
    minis = minibatches(exp, train_batch_samples=w.plan.train_batch_samples, update_epochs=1, seed=3)
    stats = w.train(minis, log_entropy=False)
    assert stats["train/tis_ratio_mean"] == pytest.approx(3.0, rel=1e-5)
    assert stats["train/tis_clip_frac"] == pytest.approx(1.0)
    assert "train/entropy" not in stats  # not logged this step and not in the loss: never computed


def test_gspo_trains_end_to_end_with_packing(tmp_path: Path):
    from rlhf.run import execute

    out = tmp_path / "gspo"
    cfg = compose_config(
        [
            f"output_dir={out}",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "tracking.log_model=false",
            "algo=gspo",
            "algo.max_steps=2",
            "rollout.max_new_tokens=12",
            "data.sources.tiny_math.max_samples=64",
            "algo.pack_sequences=true",
        ]
    )
    res = execute(cfg, progress=False)
    assert res.steps == 2 and res.model_dir
    for k in ("train/policy_loss", "train/tis_ratio_mean", "train/tis_clip_frac", "train/grad_norm"):
        assert k in res.last and res.last[k] == res.last[k], k  # logged and not NaN
    # GSPO's sequence ratios start at 1 (on-policy) and the HF rollout's log-probs are the trainer's up to rounding.
    assert res.last["train/tis_ratio_mean"] == pytest.approx(1.0, abs=1e-3)
