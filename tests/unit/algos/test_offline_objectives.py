"""The PRM and KD objectives of rlhf/training/objectives.py against hand-derived numbers.

A fixed-logits module stands in for the LM so that every number is written by hand: it returns the logits it
holds whatever the input (the objectives only read `.logits`)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rlhf.config.algo import KDConfig, PRMConfig
from rlhf.training.objectives import StepCounts, kd_objective, prm_objective, prm_prepass


class FixedLogits(torch.nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(logits=self.logits)


class CharTokenizer:
    """One id per character: "+" -> 2, "-" -> 3 (the PRM reads its reward-token ids from the tokenizer)."""

    ids = {"+": 2, "-": 3, "#": 1}

    def encode(self, text, add_special_tokens=False):
        return [self.ids.get(c, 0) for c in text]


def _prm_batch(labels):
    # One row of 4 tokens, placeholders at t = 1 and t = 3.
    return {
        "input_ids": torch.tensor([[0, 1, 0, 1]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
        "step_mask": torch.tensor([[0, 1, 0, 1]]),
        "step_labels": torch.tensor([[0.0, labels[0], 0.0, labels[1]]]),
    }


def _prm_logits():
    logits = torch.zeros(1, 4, 4)
    logits[0, 1, 2] = 2.0  # step 1: l(+) - l(-) = 2
    logits[0, 3, 3] = 1.0  # step 2: l(+) - l(-) = -1
    return logits


def test_prm_hard_labels():
    model = FixedLogits(_prm_logits())
    algo = PRMConfig(placeholder_token="#", reward_tokens=["+", "-"], loss="hard")
    # step 1 correct: -log softmax(2, 0)[0] = log(1 + e^-2) = 0.126928; step 2 wrong: -log softmax(0, 1)[1]
    # = log(1 + e^-1) = 0.313262. The step holds 4 placeholders over all micro-batches: (0.126928 + 0.313262) / 4.
    loss, m = prm_objective(
        model, _prm_batch([1.0, 0.0]), StepCounts(tokens=4.0, samples=2.0), algo=algo, tokenizer=CharTokenizer()
    )
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))) / 4
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    assert float(m["train/step_accuracy"]) == pytest.approx(2 / 4)  # both right, a share of the step's 4
    loss.backward()
    # d/dl(+) at step 1 = (softmax - onehot)[0] / 4 = (sigmoid(2) - 1) / 4
    assert float(model.logits.grad[0, 1, 2]) == pytest.approx((1 / (1 + math.exp(-2)) - 1) / 4, rel=1e-5)
    assert float(model.logits.grad[0, 0].abs().sum()) == 0.0  # no gradient away from the placeholders


def test_prm_soft_labels():
    model = FixedLogits(_prm_logits())
    algo = PRMConfig(placeholder_token="#", reward_tokens=["+", "-"], loss="soft")
    # BCE(sigmoid(2), 0.8) = 0.8 * 0.126928 + 0.2 * 2.126928 = 0.526928;
    # BCE(sigmoid(-1), 0.3) = 0.3 * 1.313262 + 0.7 * 0.313262 = 0.613262; mean over the 2 placeholders.
    loss, _ = prm_objective(
        model, _prm_batch([0.8, 0.3]), StepCounts(tokens=2.0, samples=1.0), algo=algo, tokenizer=CharTokenizer()
    )
    assert float(loss.detach()) == pytest.approx((0.526928 + 0.613262) / 2, rel=1e-5)


def test_prm_prepass_counts_the_steps_placeholders_and_reward_tokens_must_be_single_tokens():
    samples = [{"step_mask": [0, 1, 0, 1]}, {"step_mask": [0, 0, 1]}]
    assert prm_prepass(None, samples, [0], StepCounts(tokens=1.0, samples=2.0)).tokens == 3.0
    algo = PRMConfig(reward_tokens=["++", "-"])
    with pytest.raises(ValueError, match="algo.reward_tokens"):
        prm_objective(
            FixedLogits(_prm_logits()),
            _prm_batch([1.0, 0.0]),
            StepCounts(1.0, 1.0),
            algo=algo,
            tokenizer=CharTokenizer(),
        )


@pytest.mark.parametrize("temperature, kd", [(1.0, 0.130812), (2.0, 4 * 0.036333)])
def test_kd_mixes_data_nll_and_teacher_kl(temperature, kd):
    # One target (label 0) read at position 0; student uniform over 2 tokens, teacher logits (ln 3, 0).
    student = FixedLogits(torch.zeros(1, 2, 2))
    teacher = FixedLogits(torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]]))
    batch = {"input_ids": torch.tensor([[1, 0]]), "loss_mask": torch.tensor([[0, 1]])}
    algo = KDConfig(kd_coef=0.5, temperature=temperature)
    # tau = 1: p_t = (.75, .25), KL = .75 ln 1.5 + .25 ln .5 = 0.130812; tau = 2: p_t = (.633975, .366025),
    # KL = 0.036333, times tau^2 = 4. NLL = ln 2. loss = 0.5 tau^2 KL + 0.5 ln 2.
    loss, m = kd_objective(student, batch, StepCounts(tokens=1.0, samples=1.0), ref_model=teacher, algo=algo)
    assert float(loss.detach()) == pytest.approx(0.5 * kd + 0.5 * math.log(2), rel=1e-4)
    assert float(m["train/nll"]) == pytest.approx(math.log(2), rel=1e-6)
    loss.backward()
    assert teacher.logits.grad is None  # the teacher is frozen
    # d loss / d s_0 = 0.5 * tau^2 * (p_s - p_t)_0 / tau + 0.5 * (p_s - onehot)_0
    p_t0 = 3**0.5 / (1 + 3**0.5) if temperature == 2.0 else 0.75
    expected = 0.5 * temperature * (0.5 - p_t0) + 0.5 * (0.5 - 1.0)
    assert float(student.logits.grad[0, 0, 0]) == pytest.approx(expected, rel=1e-4)
