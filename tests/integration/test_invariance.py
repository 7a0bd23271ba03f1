"""Invariances of offline training: how a global batch is cut (micro-batches, data-parallel ranks, packing)
must not change the gradient.

The objectives divide by the global count of their unit over the whole optimizer step
(rlhf/training/objectives.py), and the trainer undoes DeepSpeed's own averaging, so one step on 4 samples
gives the same gradient as 4 micro-batches of 1 and as 2 ranks of 2. Clipping is switched off
(max_grad_norm=1e6) so that a wrongly scaled gradient cannot hide behind it.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import (
    SMALL_DATA,
    local_worker,
    metric_history,
    run,
    run_id,
    step_with_gradient,
)

pytestmark = pytest.mark.timeout(600)

CASES = {
    "sft": ["algo=sft", *SMALL_DATA["sft"]],
    "dpo": ["algo=dpo", *SMALL_DATA["pair"]],
}
ONE_STEP = ["algo.train_batch_samples=4", "algo.max_grad_norm=1e6", "algo.max_steps=2"]
BETA1 = 0.9  # first Adam beta of every algo preset (TrainConfig.adam_betas)


@pytest.fixture(scope="module")
def single_rank(tmp_path_factory):
    """algo -> micro-batch size -> (metrics, gradient, weights after step 1, lr), from one in-process rank."""
    out: dict[str, dict[int, tuple]] = {}
    worker = None
    try:
        for algo, overrides in CASES.items():
            out[algo] = {}
            for micro in (4, 1):
                worker = local_worker(
                    tmp_path_factory.mktemp(f"{algo}{micro}"),
                    *overrides,
                    *ONE_STEP,
                    f"algo.micro_batch_per_gpu={micro}",
                )
                stats, grad, after = step_with_gradient(worker)
                out[algo][micro] = (stats, grad, after, worker.spec.algo.lr)
        yield out
    finally:
        # One process group serves every in-process rank: DeepSpeed caches it, so it is torn down only once.
        if worker is not None:
            worker.close()


@pytest.mark.parametrize("algo", sorted(CASES))
def test_micro_batching_leaves_gradient_and_step_unchanged(single_rank, algo):
    (s4, g4, w4, lr), (s1, g1, w1, _) = single_rank[algo][4], single_rank[algo][1]
    assert [g.shape for g in g4] == [g.shape for g in g1]
    scale = max(float(g.abs().max()) for g in g4)
    assert scale > 1e-3, "the step must have a real gradient"
    for a, b in zip(g1, g4):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert s1["train/loss"] == pytest.approx(s4["train/loss"], rel=1e-6, abs=1e-7)
    assert s1["train/grad_norm"] == pytest.approx(s4["train/grad_norm"], rel=1e-5)
    # Adam's first step moves each weight by lr * g / (|g| + eps): where |g| is at the fp32 noise floor its sign
    # is arbitrary, so weights must agree within 1e-5 where the gradient is well above it, and within the
    # largest possible step (2 lr) elsewhere.
    for a, b, g in zip(w1, w4, g4):
        strong = g.abs() > 1e-4
        assert strong.float().mean() > 0.1, "most weights should see a real gradient"
        torch.testing.assert_close(a[strong], b[strong], rtol=0, atol=1e-5)
        torch.testing.assert_close(a, b, rtol=0, atol=2 * lr)


def _exp_avg(ckpt_dir: Path) -> list[torch.Tensor]:
    """Adam's first moment per parameter group, the ranks' ZeRO partitions joined in rank order."""
    files = sorted(glob.glob(str(ckpt_dir / "state" / "zero_pp_rank_*_mp_rank_00_optim_states.pt")))
    assert len(files) == 2, files
    states = [torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"] for f in files]
    groups = sorted(states[0]["base_optimizer_state"]["state"])
    return [torch.cat([s["base_optimizer_state"]["state"][g]["exp_avg"] for s in states]) for g in groups]


@pytest.mark.parametrize("algo", sorted(CASES))
def test_two_data_parallel_ranks_give_the_single_rank_gradient(single_rank, algo, tmp_path, mlflow_uri):
    # 2 CPU ranks x 1 sample x 2 accumulation = the same 4 samples as one rank with one micro-batch of 4.
    result = run(
        tmp_path,
        mlflow_uri,
        *CASES[algo],
        *ONE_STEP,
        "hw.cpu_workers=2",
        "algo.micro_batch_per_gpu=1",
        "algo.save_every=1",
    )
    stats, grad, _, _ = single_rank[algo][4]
    assert result.first["train/loss"] == pytest.approx(stats["train/loss"], rel=1e-5)
    assert result.first["train/grad_norm"] == pytest.approx(stats["train/grad_norm"], rel=1e-5)
    # After step 1 Adam's first moment is (1 - beta1) * g: the checkpoint holds the reduced gradient.
    moments = _exp_avg(tmp_path / "checkpoints" / "step_000001" / "policy")  # the trained role's shards
    assert len(moments) == len(grad)
    for m, g in zip(moments, grad):
        assert m.numel() >= g.numel()  # ZeRO pads each group to split evenly over the ranks
        torch.testing.assert_close(m[: g.numel()] / (1 - BETA1), g, rtol=0, atol=1e-5)
    assert len(metric_history(mlflow_uri, run_id(result.model_dir), "train/loss")) == 2


def _tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.models.loading import resolve_path

    path = resolve_path("tiny:llama_chat")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def _samples(task: str, tok, n: int) -> list[dict]:
    from rlhf.config.data import DataConfig, SourceConfig
    from rlhf.data.datasets import build_dataset

    if task == "sft":
        src = SourceConfig(path="asset:sft", input_key="messages", output_key=None, max_samples=n)
    else:
        src = SourceConfig(path="asset:preference", max_samples=n)
    return [s for s in build_dataset(task, DataConfig(sources={"s": src}, max_len=256), tok, "train", seed=0)]


def _token_logps(model, input_ids: torch.Tensor, **kw) -> torch.Tensor:
    logits = model(input_ids=input_ids, use_cache=False, **kw).logits[0, :-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, input_ids[0, 1:, None])[:, 0]


def test_packed_forward_gives_per_sample_token_logprobs():
    from rlhf.training.batches import collate_for_task

    model, tok = _tiny()
    samples = _samples("sft", tok, 4)
    packed = collate_for_task("sft", samples, tok, packing=True, attn_impl="sdpa", dtype=torch.float32)
    assert packed["input_ids"].shape[0] == 1 and packed["seq_lens"].tolist() == [len(s["input_ids"]) for s in samples]
    with torch.no_grad():
        row = _token_logps(
            model, packed["input_ids"], position_ids=packed["position_ids"], attention_mask=packed["attention_mask_4d"]
        )
        start = 0
        for s in samples:
            n = len(s["input_ids"])
            alone = _token_logps(model, torch.tensor([s["input_ids"]]))
            # Target t of the row predicts token t + 1; a sample's first token is predicted from the previous
            # sample, so its n - 1 own targets start at the row position of its first token.
            torch.testing.assert_close(row[start : start + n - 1], alone, rtol=0, atol=1e-5)
            start += n


@pytest.mark.parametrize("task", ["sft", "pair"])
def test_packed_and_padded_batches_give_the_same_objective(task):
    import copy

    from rlhf.config.algo import DPOConfig
    from rlhf.training.batches import collate_for_task, loss_tokens
    from rlhf.training.objectives import StepCounts, dpo_objective, sft_objective

    model, tok = _tiny()
    samples = _samples(task, tok, 4)
    batches = {
        p: collate_for_task(task, samples, tok, packing=p, attn_impl="sdpa", dtype=torch.float32) for p in (False, True)
    }
    out = {}
    with torch.no_grad():
        if task == "sft":
            counts = StepCounts(tokens=float(sum(loss_tokens(s) for s in samples)), samples=4.0)
            for p, b in batches.items():
                loss, m = sft_objective(model, b, counts)
                out[p] = {"loss": float(loss), "tokens": float(m["train/tokens"])}
        else:
            ref = copy.deepcopy(model)
            ref.lm_head.weight.mul_(0.9)  # a reference unlike the policy, so the log-ratios are not all zero
            for p, b in batches.items():
                loss, m = dpo_objective(
                    model, b, StepCounts(tokens=1.0, samples=4.0), ref_model=ref, algo=DPOConfig(beta=0.1)
                )
                out[p] = {"loss": float(loss), **{k: float(v) for k, v in m.items()}}
            assert abs(out[False]["train/reward_margin"]) > 1e-3
    assert out[True].keys() == out[False].keys()
    for k in out[False]:
        # Margins are differences of summed float32 log-probs (beta x ~100 tokens): rounding of the two layouts
        # differs by a few 1e-6 there, a real mix-up of rows by far more.
        assert out[True][k] == pytest.approx(out[False][k], rel=1e-5, abs=1e-5), k
