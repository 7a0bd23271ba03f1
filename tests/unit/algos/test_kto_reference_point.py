"""KTO's reference point z0 (Ethayarajh et al. 2024): from MISMATCHED pairs (each prompt with another row's
completion), estimated once per optimizer step, clamped at 0 and constant in the loss.

The old objective took z0 = mean(log pi(y|x) - log ref(y|x)) over each micro-batch's own matched rows: a
different z0 per micro-batch, so the step's loss and gradient depended on how the step was cut. These tests pin
the value against a row-by-row computation and the invariance over micro-batches.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rlhf.config.algo import KTOConfig
from rlhf.training.objectives import StepCounts, kto_mismatched_samples, kto_objective, kto_prepass


def test_mismatched_samples_pair_each_prompt_with_the_next_rows_completion():
    # prompt tokens carry loss mask 0, completion tokens 1
    a = {"input_ids": [1, 2, 10, 11], "loss_mask": [0, 0, 1, 1], "label": True}
    b = {"input_ids": [3, 20], "loss_mask": [0, 1], "label": False}
    c = {"input_ids": [4, 5, 6, 30, 31, 32], "loss_mask": [0, 0, 0, 1, 1, 1], "label": True}
    out = kto_mismatched_samples([a, b, c])
    assert [o["input_ids"] for o in out] == [[1, 2, 20], [3, 30, 31, 32], [4, 5, 6, 10, 11]]
    assert [o["loss_mask"] for o in out] == [[0, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1, 1]]
    # one sample is its own mismatch
    assert kto_mismatched_samples([a])[0]["input_ids"] == a["input_ids"]


@pytest.fixture(scope="module")
def setup():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.config.data import DataConfig, SourceConfig
    from rlhf.data.datasets import build_dataset
    from rlhf.models.loading import resolve_path

    path = resolve_path("tiny:llama_chat")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.lm_head.weight.mul_(1.1)  # a reference whose mismatched log-ratio is positive, so z0 is not clamped
    src = SourceConfig(path="asset:kto", max_samples=8)
    ds = build_dataset("unpaired", DataConfig(sources={"s": src}, max_len=256, eval_fraction=0.0), tok, "train")
    samples = list(ds)[:4]
    assert len(samples) == 4 and len({s["label"] for s in samples}) == 2, "need desirable and undesirable rows"
    return model, ref, tok, samples


def _collate(tok, task):
    from rlhf.training.batches import collate_for_task

    return lambda s: collate_for_task(task, s, tok, packing=False, attn_impl="sdpa", dtype=torch.float32)


def _row_logratio(model, ref, ids: list[int], mask: list[int]) -> float:
    """sum over loss tokens of log pi - log ref, one unpadded row at a time."""
    x = torch.tensor([ids])
    with torch.no_grad():
        lp = [torch.log_softmax(m(input_ids=x).logits[0, :-1].double(), -1) for m in (model, ref)]
    total = 0.0
    for t in range(1, len(ids)):
        if mask[t]:
            total += float(lp[0][t - 1, ids[t]] - lp[1][t - 1, ids[t]])
    return total


def test_reference_point_is_the_mean_mismatched_log_ratio(setup):
    model, ref, tok, samples = setup
    counts = StepCounts(tokens=0.0, samples=4.0)
    out = kto_prepass(
        model, samples, range(4), counts, ref_model=ref, collate=_collate(tok, "sft"), micro_batch=3, algo=None
    )
    # z0 by hand: row i = prompt_i + completion_{(i+1) mod 4}, log-ratio summed over the completion, then the mean
    rows = []
    for i in range(4):
        p = samples[i]["loss_mask"].index(1)
        q = samples[(i + 1) % 4]["loss_mask"].index(1)
        comp = samples[(i + 1) % 4]["input_ids"][q:]
        rows.append(_row_logratio(model, ref, samples[i]["input_ids"][:p] + comp, [0] * p + [1] * len(comp)))
    z0 = sum(rows) / 4
    assert z0 > 0.1
    assert out.kl_ref == pytest.approx(z0, rel=1e-4)
    # the matched estimate (the old code) is another number
    matched = sum(_row_logratio(model, ref, s["input_ids"], s["loss_mask"]) for s in samples) / 4
    assert abs(matched - z0) > 0.05
    # and the loss is sum_i w (1 - sigmoid(beta (r_i - z0))) for desirable, w (1 - sigmoid(beta (z0 - r_i))) else
    algo = KTOConfig(beta=0.1, desirable_weight=1.0, undesirable_weight=1.5)
    with torch.no_grad():
        loss, metrics = kto_objective(model, _collate(tok, "unpaired")(samples), out, ref_model=ref, algo=algo)
    expected = 0.0
    for s in samples:
        r = _row_logratio(model, ref, s["input_ids"], s["loss_mask"])
        sig = 1 / (1 + math.exp(-0.1 * ((r - z0) if s["label"] else (z0 - r))))
        expected += (1.0 if s["label"] else 1.5) * (1 - sig)
    assert float(loss) == pytest.approx(expected / 4, rel=1e-4)
    assert float(metrics["train/kl_ref"]) == pytest.approx(z0, rel=1e-4)


def test_loss_and_gradient_do_not_depend_on_micro_batching(setup):
    model, ref, tok, samples = setup
    algo = KTOConfig(beta=0.1)

    def step(micro: int):
        model.zero_grad()
        counts = StepCounts(tokens=0.0, samples=4.0)
        counts = kto_prepass(
            model, samples, range(4), counts, ref_model=ref, collate=_collate(tok, "sft"), micro_batch=micro
        )
        total = 0.0
        for i in range(0, 4, micro):
            loss, _ = kto_objective(
                model, _collate(tok, "unpaired")(samples[i : i + micro]), counts, ref_model=ref, algo=algo
            )
            loss.backward()
            total += float(loss.detach())
        return total, [p.grad.clone() for p in model.parameters()]

    loss4, grad4 = step(4)
    loss1, grad1 = step(1)
    assert loss1 == pytest.approx(loss4, rel=1e-6)
    assert max(float(g.abs().max()) for g in grad4) > 1e-4
    for a, b in zip(grad1, grad4):
        # float32 sums in another order: a few 1e-7 apart on some CPUs, where an order change of the reference
        # point (the old bug) moved gradients by ~1e-3.
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    model.zero_grad()


def test_without_a_prepass_the_batch_needs_its_mismatched_rows(setup):
    model, ref, tok, samples = setup
    batch = _collate(tok, "unpaired")(samples)
    with pytest.raises(ValueError, match="kto_prepass"):
        kto_objective(model, batch, StepCounts(tokens=0.0, samples=4.0), ref_model=ref, algo=KTOConfig())
    batch["kl_batch"] = _collate(tok, "sft")(kto_mismatched_samples(samples))
    with torch.no_grad():
        loss, m = kto_objective(model, batch, StepCounts(tokens=0.0, samples=4.0), ref_model=ref, algo=KTOConfig())
    assert float(m["train/kl_ref"]) > 0.1 and torch.isfinite(loss)
