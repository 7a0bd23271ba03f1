"""Offline algorithms end to end on the tiny chat model under a local Ray: SFT, continued pre-training, reward
model, DPO/IPO/cDPO, KTO and LoRA SFT.

Each run is short (a few steps on a shrunken shipped data set); the assertions are about behaviour: the loss
falls, the held-out accuracy beats chance, the preference margin grows, every parameter moved, the saved
directory reloads with `from_pretrained` and reproduces the trainer's final evaluation, MLflow holds the run,
and a run resumed from its step checkpoint ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.integration.conftest import SMALL_DATA, base_weights, compose, metric_history, run, run_id, weights

pytestmark = pytest.mark.timeout(600)

# SFT: 32 conversations, 4 steps of 8 per epoch, 2 epochs; state saved after step 4 (the end of epoch 1).
SFT = [
    "algo=sft",
    "algo.train_batch_samples=8",
    "algo.micro_batch_per_gpu=4",
    "algo.epochs=2",
    "algo.save_every=4",
    "algo.keep_checkpoints=5",
    *SMALL_DATA["sft"],
]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, mlflow_uri):
    out = tmp_path_factory.mktemp("sft")
    result = run(out, mlflow_uri, *SFT, log_model=True)
    return result, out


def _epoch_loss(uri: str, rid: str, steps: range) -> float:
    """Token-weighted mean training loss over `steps` (1-based): each step's loss is its own token mean."""
    loss, tokens = metric_history(uri, rid, "train/loss"), metric_history(uri, rid, "train/tokens")
    return sum(loss[s] * tokens[s] for s in steps) / sum(tokens[s] for s in steps)


def test_sft_loss_falls_and_every_parameter_moves(sft_run, mlflow_uri):
    result, out = sft_run
    assert result.algo == "sft" and result.steps == 8
    # Both epochs see the same 32 conversations, so their token-weighted mean losses compare like with like:
    # without updates they would be equal exactly (same tokens, same weights). Measured: about 1.27 -> 1.17.
    rid = run_id(result.model_dir)
    first, second = _epoch_loss(mlflow_uri, rid, range(1, 5)), _epoch_loss(mlflow_uri, rid, range(5, 9))
    assert second < first - 0.05, (first, second)
    before, after = base_weights(), weights(result.model_dir)
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"parameters not updated: {unchanged}"


def _sft_eval_loss(model_dir: str, cfg) -> tuple[float, float]:
    """Token-mean NLL of the response tokens of the eval split, computed from the saved directory alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.data.collate import collate_sft
    from rlhf.data.datasets import build_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ds = build_dataset("sft", cfg.data, tok, "eval", seed=cfg.seed)
    nll, tokens = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(ds), 8):
            b = collate_sft([ds[j] for j in range(i, min(i + 8, len(ds)))], tok.pad_token_id)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(-1, b["input_ids"][:, 1:, None])[..., 0]
            mask = b["loss_mask"][:, 1:].float()
            nll -= float((logp * mask).sum())
            tokens += float(mask.sum())
    return nll / tokens, tokens


def test_saved_model_reproduces_trainer_eval(sft_run, mlflow_uri):
    result, out = sft_run
    cfg = OmegaConf.to_object(compose(out, mlflow_uri, *SFT))
    loss, tokens = _sft_eval_loss(result.model_dir, cfg)
    # The trainer evaluated its final in-memory model; the reloaded weights must give the same logits.
    assert tokens == result.eval["eval/tokens"]
    assert loss == pytest.approx(result.eval["eval/loss"], rel=1e-5)


def test_mlflow_holds_the_run(sft_run, mlflow_uri):
    from mlflow.tracking import MlflowClient

    result, _ = sft_run
    client = MlflowClient(mlflow_uri)
    run_ = client.get_run(run_id(result.model_dir))
    assert run_.info.status == "FINISHED"
    params = run_.data.params
    assert params["algo.name"] == "sft" and params["algo.train_batch_samples"] == "8"
    assert params["model.name_or_path"] == "tiny:llama_chat" and params["hw.name"] == "cpu"
    # The values the run used, the planner's included: the learning rate left unset (tiny preset: 2e-4).
    assert float(params["algo.lr"]) == 2e-4 and params["model.hidden_size"] == "128"
    tags = run_.data.tags
    for key in ("algo", "model", "hw", "git_commit"):
        assert tags.get(key), f"tag {key} missing: {sorted(tags)}"
    assert tags["algo"] == "sft" and tags["hw"] == "cpu"
    metrics = run_.data.metrics
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/loss"} <= set(metrics)
    # "objective" is the sweep objective under one name in every run (rlhf/tracking/lineage.py).
    bad = [k for k in metrics if k != "objective" and not re.fullmatch(r"[a-z_]+/[A-Za-z0-9_./]+", k)]
    assert not bad, f"metric names not <area>/<name>: {bad}"
    assert len(metric_history(mlflow_uri, run_.info.run_id, "train/loss")) == result.steps
    top = {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert {"config.yaml", "resolved_config.yaml", "plan.json", "model"} <= top, top
    model_files = {Path(a.path).name for a in client.list_artifacts(run_.info.run_id, "model")}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= model_files, model_files


def test_resume_continues_from_checkpoint_to_the_same_weights(sft_run, mlflow_uri, tmp_path):
    result, out = sft_run
    ckpt = out / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_000008"  # the last step is checkpointed too
    assert (ckpt / "step_000004" / "trainer_state.json").exists()
    # A run that crashed after its step-4 checkpoint: the same output_dir holds only that checkpoint.
    crashed = tmp_path / "crashed"
    shutil.copytree(ckpt / "step_000004", crashed / "checkpoints" / "step_000004")
    (crashed / "checkpoints" / "latest").write_text("step_000004\n")
    resumed = run(crashed, mlflow_uri, *SFT, "resume=true")
    assert resumed.steps == 8
    steps = sorted(metric_history(mlflow_uri, run_id(resumed.model_dir), "train/loss"))
    assert steps == [5, 6, 7, 8], f"the resumed run must train steps 5-8 only, logged {steps}"
    # Same data order, optimizer moments and learning-rate schedule: the same final weights.
    a, b = weights(result.model_dir), weights(resumed.model_dir)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    assert resumed.eval["eval/loss"] == pytest.approx(result.eval["eval/loss"], rel=1e-5)


def _all_token_loss(model_dir: str, samples: list[dict]) -> float:
    """Token-mean NLL over every token but each text's first, one unpadded forward per text."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for s in samples:
            ids = torch.tensor([s["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            nll -= float(logp.gather(-1, ids[0, 1:, None]).sum())
            tokens += ids.shape[1] - 1
    return nll / tokens


def test_pretrain_trains_on_every_token(tmp_path, mlflow_uri):
    from transformers import AutoTokenizer

    from rlhf.data.datasets import build_dataset
    from rlhf.models.loading import resolve_path

    overrides = ["algo=pretrain", "algo.max_steps=3", *SMALL_DATA["pretrain"]]
    result = run(tmp_path, mlflow_uri, *overrides)
    cfg = OmegaConf.to_object(compose(tmp_path, mlflow_uri, *overrides))
    assert cfg.data.packing, "the pretrain data preset packs; this test covers the packed path"
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    ds = build_dataset("pretrain", cfg.data, tok, "eval", seed=cfg.seed)
    samples = [ds[i] for i in range(len(ds))]
    assert len(samples) == 16  # 20% of 80 rows held out
    assert all(all(s["loss_mask"]) for s in samples)
    # Every token but each text's first (nothing predicts it) counts toward the evaluated loss.
    assert result.eval["eval/tokens"] == sum(len(s["input_ids"]) - 1 for s in samples)
    # The trainer's packed evaluation equals unpacked forwards of the saved model, and beats the start.
    assert _all_token_loss(result.model_dir, samples) == pytest.approx(result.eval["eval/loss"], rel=1e-5)
    start = _all_token_loss(resolve_path(cfg.model.name_or_path), samples)
    assert result.eval["eval/loss"] < start - 0.3, (start, result.eval["eval/loss"])


def test_reward_model_beats_chance_and_reloads(tmp_path, mlflow_uri):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.data.collate import collate_pairs
    from rlhf.data.datasets import build_dataset

    overrides = ["algo=rm", "algo.max_steps=3", "algo.train_batch_samples=16", *SMALL_DATA["pair"]]
    result = run(tmp_path, mlflow_uri, *overrides)
    # 32 held-out pairs: chance is 0.5 (a binomial std of 0.09); measured about 0.9 after 3 steps.
    assert result.eval["eval/accuracy"] >= 0.75, result.eval
    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir, dtype=torch.float32).eval()
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    cfg = OmegaConf.to_object(compose(tmp_path, mlflow_uri, *overrides))
    ds = build_dataset("pair", cfg.data, tok, "eval", seed=cfg.seed)
    chosen, rejected = [], []
    with torch.no_grad():
        for i in range(0, len(ds), 8):
            b = collate_pairs([ds[j] for j in range(i, min(i + 8, len(ds)))], tok.pad_token_id)
            scores = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, 0]
            half = scores.shape[0] // 2
            chosen.append(scores[:half])
            rejected.append(scores[half:])
    c, r = torch.cat(chosen), torch.cat(rejected)
    assert float((c > r).float().mean()) == pytest.approx(result.eval["eval/accuracy"], abs=1e-6)
    assert float(c.mean()) == pytest.approx(result.eval["eval/chosen_score"], abs=1e-4)
    assert float(r.mean()) == pytest.approx(result.eval["eval/rejected_score"], abs=1e-4)


@pytest.fixture(scope="module")
def dpo_family(tmp_path_factory, mlflow_uri):
    """DPO, IPO and cDPO from the same start on the same batches (beta 0.1, cDPO label smoothing 0.1)."""
    runs = {}
    for algo, steps in (("dpo", 2), ("ipo", 1), ("cdpo", 1)):
        out = tmp_path_factory.mktemp(algo)
        runs[algo] = run(
            out,
            mlflow_uri,
            f"algo={algo}",
            f"algo.max_steps={steps}",
            "algo.train_batch_samples=8",
            "algo.micro_batch_per_gpu=4",
            *SMALL_DATA["pair"],
        )
    return runs


def test_dpo_raises_the_preference_margin(dpo_family):
    r = dpo_family["dpo"]
    # Step 1 runs the untouched policy: it equals the reference, so every implicit reward is exactly 0.
    assert r.first["train/reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert r.last["train/reward_margin"] > 0.02, r.last
    assert r.eval["eval/reward_margin"] > 0.05 and r.eval["eval/reward_accuracy"] > 0.75, r.eval
    assert r.eval["eval/loss"] < math.log(2) - 0.01


def test_ipo_and_cdpo_first_batch_losses_follow_their_formulas(dpo_family):
    # Policy == reference on the first batch, so the log-ratio gap h is 0 for every pair:
    #   DPO  -log sigmoid(0)                                  = ln 2
    #   cDPO -(1 - 0.1) log sigmoid(0) - 0.1 log sigmoid(-0)  = ln 2 (smoothing is symmetric at h = 0)
    #   IPO  (0 - 1 / (2 * 0.1))^2                            = 25
    assert dpo_family["dpo"].first["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert dpo_family["cdpo"].first["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert dpo_family["ipo"].first["train/loss"] == pytest.approx(25.0, abs=1e-4)
    for algo in ("ipo", "cdpo"):
        assert all(math.isfinite(v) for v in dpo_family[algo].eval.values())


def test_dpo_family_losses_differ_as_the_formulas_say_when_the_gap_is_not_zero():
    """The objectives on one real pair with a reference that differs from the policy (h != 0)."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.config.algo import DPOConfig
    from rlhf.config.data import DataConfig, SourceConfig
    from rlhf.data.datasets import build_dataset
    from rlhf.models.loading import resolve_path
    from rlhf.training.batches import collate_for_task
    from rlhf.training.objectives import StepCounts, dpo_objective

    path = resolve_path("tiny:llama_chat")
    tok = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ref = copy.deepcopy(policy)
    with torch.no_grad():
        ref.lm_head.weight.mul_(0.9)
    data = DataConfig(sources={"p": SourceConfig(path="asset:preference", max_samples=1)}, max_len=256)
    batch = collate_for_task(
        "pair",
        [build_dataset("pair", data, tok, "train", seed=0)[0]],
        tok,
        packing=False,
        attn_impl="sdpa",
        dtype=torch.float32,
    )
    one = StepCounts(tokens=1.0, samples=1.0)
    beta, eps = 0.1, 0.1
    out = {}
    with torch.no_grad():
        for name, cfg in (
            ("dpo", DPOConfig(beta=beta)),
            ("cdpo", DPOConfig(beta=beta, label_smoothing=eps)),
            ("ipo", DPOConfig(beta=beta, loss="ipo")),
        ):
            loss, m = dpo_objective(policy, batch, one, ref_model=ref, algo=cfg)
            out[name] = (float(loss), float(m["train/reward_margin"]))
    margin = out["dpo"][1]  # beta * h with summed log-probs
    assert abs(margin) > 1e-3, "the perturbed reference must move the gap away from 0"
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731 - -log sigmoid(z) = softplus(-z)
    assert out["dpo"][0] == pytest.approx(softplus(-margin), rel=1e-5)
    assert out["cdpo"][0] == pytest.approx((1 - eps) * softplus(-margin) + eps * softplus(margin), rel=1e-5)
    assert out["cdpo"][0] != pytest.approx(out["dpo"][0], rel=1e-3)
    h_mean = out["ipo"][1] / beta  # IPO's gap uses per-token mean log-probs
    assert out["ipo"][0] == pytest.approx((h_mean - 1 / (2 * beta)) ** 2, rel=1e-5)


def test_kto_runs(tmp_path, mlflow_uri):
    result = run(tmp_path, mlflow_uri, "algo=kto", "algo.max_steps=2", *SMALL_DATA["kto"])
    # Step 1: policy == reference, every reward and the reference point are 0, so each sample's loss is
    # weight * (1 - sigmoid(0)) = 0.5 with both weights 1.
    assert result.first["train/loss"] == pytest.approx(0.5, abs=1e-6)
    assert result.last["train/desirable_reward"] > result.last["train/undesirable_reward"], result.last
    before, after = base_weights(), weights(result.model_dir)
    assert not [k for k in before if torch.equal(before[k], after[k])]


def test_lora_sft_trains_and_saves_merged_weights(tmp_path, mlflow_uri):
    from transformers import AutoModelForCausalLM

    result = run(
        tmp_path,
        mlflow_uri,
        "algo=sft",
        "model.lora.rank=8",
        "algo.max_steps=2",
        "algo.train_batch_samples=8",
        *SMALL_DATA["sft"],
    )
    final = Path(result.model_dir)
    assert (final / "adapter" / "adapter_config.json").exists()
    before, after = base_weights(), weights(final)
    # Merged full weights under the base model's names: from_pretrained needs no peft.
    assert before.keys() == after.keys()
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(any(t in k for t in targets) for k in moved), moved
    assert len(moved) == 4 * 4, f"every adapted projection of the 4 layers must move: {moved}"
    model = AutoModelForCausalLM.from_pretrained(final)
    assert math.isfinite(float(model(input_ids=torch.tensor([[1, 5, 9]])).logits.sum()))


def test_qlora_sft_trains_a_4bit_base_and_saves_merged_weights(tmp_path, mlflow_uri):
    """model.lora.load_in_4bit=true (bitsandbytes NF4 base, LoRA adapters trained): the adapters move, and the
    saved model is the dequantized base plus the merged adapters, loadable without peft or bitsandbytes."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the quant extra (make install installs it)")
    from transformers import AutoModelForCausalLM

    result = run(
        tmp_path,
        mlflow_uri,
        "algo=sft",
        "model.lora.rank=8",
        "model.lora.load_in_4bit=true",
        "algo.max_steps=2",
        "algo.train_batch_samples=8",
        *SMALL_DATA["sft"],
    )
    assert math.isfinite(result.first["train/loss"]) and math.isfinite(result.last["train/loss"])
    final = Path(result.model_dir)
    adapter = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    before, after = base_weights(), weights(final)
    assert before.keys() == after.keys()
    # NF4 keeps every quantized matrix within a few percent of its scale; the merged adapters add to q/k/v/o.
    for k in before:
        err = float((after[k].float() - before[k].float()).abs().max())
        assert err <= 0.25 * float(before[k].float().abs().max()) + 1e-6, (k, err)
    model = AutoModelForCausalLM.from_pretrained(final)
    assert math.isfinite(float(model(input_ids=torch.tensor([[1, 5, 9]])).logits.sum()))
