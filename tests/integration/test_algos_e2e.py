"""The rest of the family end to end on the tiny models under a local Ray: KTO's step-wide reference point
through the trainer, PRM (and reward=prm on its saved model), KD, conditional SFT (and generate.condition),
rejection sampling and iterative DPO (each round a child MLflow run).

Runs are a few steps on shrunken shipped data; the assertions are about behaviour: the loss or the teacher
gap falls, weights move, the saved folder reloads with `from_pretrained`, MLflow holds the runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import (
    SMALL_DATA,
    base_weights,
    compose,
    local_worker,
    metric_history,
    run,
    run_id,
    step_with_gradient,
    weights,
)

pytestmark = pytest.mark.timeout(600)


def test_kto_step_through_the_trainer_does_not_depend_on_micro_batching(tmp_path_factory):
    # The old objective took the reference point from each micro-batch's own rows: micro-batches of 1 and of 4
    # gave different losses and gradients. Step 2 (the policy has moved, so the reference point is not 0).
    out, worker = {}, None
    try:
        for micro in (4, 1):
            worker = local_worker(
                tmp_path_factory.mktemp(f"kto{micro}"),
                "algo=kto",
                *SMALL_DATA["kto"],
                "algo.train_batch_samples=4",
                "algo.max_grad_norm=1e6",
                "algo.max_steps=3",
                f"algo.micro_batch_per_gpu={micro}",
            )
            worker.train_step(0)
            out[micro] = step_with_gradient(worker, 1)
    finally:
        if worker is not None:
            worker.close()
    (s4, g4, _), (s1, g1, _) = out[4], out[1]
    # Equal up to fp32 sums taken in another order (1.2e-5 relative apart with the packages of 2026-12-08); the
    # per-micro-batch reference point of the old objective moved them by far more.
    assert s4["train/kl_ref"] == pytest.approx(s1["train/kl_ref"], rel=1e-4)
    assert s1["train/loss"] == pytest.approx(s4["train/loss"], rel=1e-4)
    for a, b in zip(g1, g4):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_prm_trains_saves_and_scores_rollouts_step_by_step(tmp_path, mlflow_uri):
    from transformers import AutoModelForCausalLM

    from rlhf.rewards.loader import load_reward_function

    result = run(tmp_path, mlflow_uri, "algo=prm", "algo.max_steps=4", "data.sources.tiny_prm.max_samples=96")
    hist = metric_history(mlflow_uri, run_id(result.model_dir), "train/loss")
    assert len(hist) == 4 and hist[4] < hist[1], hist
    assert 0.0 <= result.eval["eval/step_accuracy"] <= 1.0 and result.eval["eval/step_tags"] > 0
    info = json.loads((tmp_path / "final" / "prm.json").read_text())
    assert info == {"placeholder_token": "#", "reward_tokens": ["+", "-"]}
    AutoModelForCausalLM.from_pretrained(result.model_dir)  # a plain causal LM folder
    prompts = ["<|im_start|>user\nStart with 3, add 1. What is the result?<|im_end|>\n<|im_start|>assistant\n"] * 2
    responses = ["3 + 1 = 4.\nThe answer is 4.", "3 + 1 = 5.\nThe answer is 5."]
    scores = {
        red: load_reward_function("rlhf.rewards.prm:ProcessReward", model=result.model_dir, reduction=red)(
            prompts, responses, {}
        )
        for red in ("min", "last", "mean", "prod")
    }
    for i in range(2):
        s = {k: float(v[i]) for k, v in scores.items()}
        # two steps with scores p1, p2 in (0, 1): prod <= min <= mean, and last is one of the two
        assert 0 < s["prod"] <= s["min"] + 1e-6 <= s["mean"] + 2e-6 < 1
        assert s["min"] - 1e-6 <= s["last"] <= 2 * s["mean"] - s["min"] + 1e-6


def test_kd_student_moves_towards_the_teacher(tmp_path, mlflow_uri):
    result = run(
        tmp_path,
        mlflow_uri,
        "algo=kd",
        "algo.max_steps=4",
        "algo.train_batch_samples=8",
        *SMALL_DATA["sft"],
    )
    rid = run_id(result.model_dir)
    kd = metric_history(mlflow_uri, rid, "train/kd_loss")
    assert len(kd) == 4 and kd[4] < 0.9 * kd[1], kd
    assert result.eval["eval/kd_loss"] > 0
    # Held out: the same four steps lower the student's KD loss on the evaluation rows (the first step's
    # training loss, of other rows, is no yardstick for it).
    worker = local_worker(
        tmp_path / "local", "algo=kd", "algo.max_steps=4", "algo.train_batch_samples=8", *SMALL_DATA["sft"]
    )
    try:
        before = worker.evaluate()["eval/kd_loss"]
        for step in range(4):
            worker.train_step(step)
        after = worker.evaluate()["eval/kd_loss"]
    finally:
        worker.close()
    assert after < before, (before, after)
    from rlhf.models.loading import resolve_path

    start = weights(resolve_path("tiny:llama"))  # the student is model=tiny, the teacher tiny:llama_chat
    after = weights(result.model_dir)
    assert not [k for k in start if torch.equal(start[k], after[k])]


def test_csft_trains_with_the_condition_and_generates_with_one(tmp_path, mlflow_uri):
    from omegaconf import OmegaConf

    from rlhf.data.datasets import build_dataset
    from rlhf.generate import generate
    from rlhf.models.loading import load_tokenizer

    overrides = ["algo=csft", "algo.max_steps=2", "data.sources.tiny_kto.max_samples=64"]
    cfg = OmegaConf.to_object(compose(tmp_path, mlflow_uri, *overrides))
    tok = load_tokenizer(cfg.model)
    ds = build_dataset("sft", cfg.algo.conditioned(cfg.data), tok, "train", seed=0)
    texts = [tok.decode(s["input_ids"]) for s in ds]
    assert all("<rm_score>: True " in t or "<rm_score>: False " in t for t in texts)
    assert any("<rm_score>: False " in t for t in texts) and any("<rm_score>: True " in t for t in texts)
    result = run(tmp_path / "run", mlflow_uri, *overrides)
    hist = metric_history(mlflow_uri, run_id(result.model_dir), "train/loss")
    assert hist[2] < hist[1]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is 2 + 3?"}) + "\n")
    gcfg = OmegaConf.to_object(
        compose(
            tmp_path,
            mlflow_uri,
            "algo=csft",
            f"model.name_or_path={result.model_dir}",
            f"generate.prompts={prompts}",
            f"generate.out={tmp_path / 'gen.jsonl'}",
            "generate.condition='<rm_score>: True '",
            "generate.max_new_tokens=4",
        )
    )
    row = json.loads(generate(gcfg).read_text().splitlines()[0])
    assert "<rm_score>: True What is 2 + 3?" in row["prompt"] and "response" in row


def _children(mlflow_uri: str, parent: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    return sorted(runs, key=lambda r: r.info.run_name)


def _parent_id(mlflow_uri: str, model_dir) -> str:
    """The run of the whole command: the parent of the round run that saved `model_dir`."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_uri).get_run(run_id(model_dir)).data.tags["mlflow.parentRunId"]


@pytest.mark.parametrize(
    "algo, rounds", [("rejection_sampling", "algo.rounds=2"), ("iterative_dpo", "algo.iterations=2")]
)
def test_sampling_rounds_train_from_the_previous_round_each_a_child_run(tmp_path, mlflow_uri, algo, rounds):
    result = run(
        tmp_path,
        mlflow_uri,
        f"algo={algo}",
        rounds,
        # The warmed model answers the default task with one digit, so only prompts whose samples differ in
        # exactness make a DPO pair (about half): 32 prompts keep a round above one batch of 8 pairs.
        "algo.prompts_per_round=32",
        "algo.max_new_tokens=8",
        "eval.max_prompts=8",
    )
    assert result.model_dir == str(tmp_path / "round_2" / "final")
    # round 2 sampled from round 1's model and trained it further
    r1, r2 = weights(tmp_path / "round_1" / "final"), weights(result.model_dir)
    base = base_weights()
    assert not [k for k in base if torch.equal(base[k], r1[k])]
    assert not [k for k in r1 if torch.equal(r1[k], r2[k])]
    children = _children(mlflow_uri, _parent_id(mlflow_uri, result.model_dir))
    assert [c.info.run_name for c in children] == ["round_1", "round_2"]
    assert all(c.info.status == "FINISHED" for c in children)
    for c in children:
        assert c.data.metrics["rollout/kept"] > 0 and "train/loss" in c.data.metrics
    kept = [json.loads(x) for x in (tmp_path / "round_1" / "data.jsonl").read_text().splitlines()]
    assert set(kept[0]) == ({"prompt", "chosen", "rejected"} if algo == "iterative_dpo" else {"prompt", "response"})
    assert "eval/reward_mean" in result.eval


def test_moe_grpo_generates_with_its_router_loss_on_and_saves_a_model_that_generates(tmp_path, mlflow_uri):
    """model=tiny_moe (Mixtral-style, router aux loss 0.02): HF generate inside training must not compute the
    router loss over a KV-cached step (it failed on the mask's shape), the experts train, and the saved model
    generates after from_pretrained."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run(
        tmp_path,
        mlflow_uri,
        "model=tiny_moe",
        "algo=grpo",
        "algo.max_steps=2",
        "algo.prompts_per_step=4",
        "algo.train_batch_samples=16",
        "rollout.max_new_tokens=8",
        "data.sources.tiny_math.max_samples=32",
        "eval.max_prompts=8",
    )
    from rlhf.models.loading import resolve_path

    start, after = weights(resolve_path("tiny:mixtral")), weights(result.model_dir)
    experts = [k for k in start if ".experts." in k]
    assert experts and [k for k in experts if not torch.equal(start[k], after[k])]
    config = json.loads((Path(result.model_dir) / "config.json").read_text())
    assert config["output_router_logits"] is False
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    out = model.generate(**tok(["What is 3 * 0?"], return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 0
