import math

import pytest
import torch

from rlhf.algos.prm import PRM_LOSS_KINDS, prm_loss, prm_step_scores, reduce_step_scores

POS, NEG = 3, 4


def _logits():
    # V = 5; tags at t = 1 and t = 3. At t = 1 logits[+] = ln 3, logits[-] = 0 -> P(+) = 3/4;
    # at t = 3 the reverse -> P(+) = 1/4. Token 0 has a large logit everywhere: the restricted softmax ignores it.
    logits = torch.zeros(1, 4, 5)
    logits[..., 0] = 10.0
    logits[0, 1, POS] = math.log(3.0)
    logits[0, 3, NEG] = math.log(3.0)
    return logits


TAGS = torch.tensor([[0, 1, 0, 1]], dtype=torch.bool)


def test_step_scores_hand_values():
    scores = prm_step_scores(_logits(), TAGS, POS, NEG)
    torch.testing.assert_close(scores, torch.tensor([[0.0, 0.75, 0.0, 0.25]]))


def test_hard_loss_hand_value():
    # both steps labelled "+" (index 0 of label_ids): -ln 0.75 = 0.287682, -ln 0.25 = 1.386294; mean 0.836988
    targets = torch.tensor([[-100, 0, -100, 0]])  # non-tag positions are ignored
    loss, stats = prm_loss(_logits(), TAGS, targets, label_ids=(POS, NEG))
    assert loss.item() == pytest.approx(0.836988, abs=1e-6)
    assert stats["accuracy"].item() == pytest.approx(0.5)  # step 1 predicted "+", step 3 predicted "-"


def test_soft_loss_hand_value():
    # targets P(+) = 1 and 0.25:
    # BCE(0.75, 1) = -ln 0.75 = 0.287682; BCE(0.25, 0.25) = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335
    # mean = 0.425009
    targets = torch.tensor([[0.0, 1.0, 0.0, 0.25]])
    loss, stats = prm_loss(_logits(), TAGS, targets, label_ids=(POS, NEG), kind="soft")
    assert loss.item() == pytest.approx(0.425009, abs=1e-6)
    assert stats["accuracy"].item() == pytest.approx(1.0)  # both sides of 0.5 agree


def test_prm_loss_gradient_only_reaches_tag_positions_and_label_tokens():
    logits = _logits().requires_grad_()
    prm_loss(logits, TAGS, torch.tensor([[0, 0, 0, 1]]), label_ids=(POS, NEG))[0].backward()
    touched = logits.grad.abs() > 0
    assert touched[0, [0, 2]].sum() == 0
    assert touched[0, :, :3].sum() == 0
    assert touched[0, [1, 3]][:, [POS, NEG]].all()


def test_reduce_step_scores():
    scores = torch.tensor([[0.0, 0.75, 0.0, 0.25], [0.5, 0.0, 0.0, 0.0], [0.9, 0.9, 0.9, 0.9]])
    tags = torch.tensor([[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    # min: 0.25, 0.5; last: 0.25, 0.5; mean: 0.5, 0.5; prod: 0.75 * 0.25 = 0.1875, 0.5; no tags -> 0
    expected = {"min": [0.25, 0.5, 0.0], "last": [0.25, 0.5, 0.0], "mean": [0.5, 0.5, 0.0], "prod": [0.1875, 0.5, 0.0]}
    for reduction, values in expected.items():
        torch.testing.assert_close(reduce_step_scores(scores, tags, reduction), torch.tensor(values))


def test_prm_errors():
    targets = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"unknown PRM loss kind 'bce'.*valid names: hard, soft"):
        prm_loss(_logits(), TAGS, targets, label_ids=(POS, NEG), kind="bce")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        prm_loss(_logits(), TAGS, targets, label_ids=(POS, 7))
    with pytest.raises(ValueError, match="positive_id, negative_id"):
        prm_loss(_logits(), TAGS, targets.float(), label_ids=(1, POS, NEG), kind="soft")
    with pytest.raises(ValueError, match=r"indices in \[0, 2\)"):
        prm_loss(_logits(), TAGS, torch.full((1, 4), 2), label_ids=(POS, NEG))
    with pytest.raises(ValueError, match="step-score reduction"):
        reduce_step_scores(torch.zeros(1, 4), TAGS, "max")
    assert sorted(PRM_LOSS_KINDS) == ["hard", "soft"]
