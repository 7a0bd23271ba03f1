import pytest
import torch

from rlhf.rewards.combine import combine_rewards

R1 = torch.tensor([1.0, 0.0, 0.5])
R2 = torch.tensor([0.5, 2.0, -1.0])


@pytest.mark.parametrize(
    "rule, weights, expected",
    [
        ("sum", None, [1.5, 2.0, -0.5]),  # [1 + .5, 0 + 2, .5 - 1]
        ("mean", None, [0.75, 1.0, -0.25]),  # sum / 2
        ("weighted", {"a": 2.0, "b": 0.5}, [2.25, 1.0, 0.5]),  # [2*1 + .5*.5, 0 + .5*2, 2*.5 - .5*1]
        ("min", None, [0.5, 0.0, -1.0]),
        ("product", None, [0.5, 0.0, -0.5]),  # [1*.5, 0*2, .5*-1]
    ],
)
def test_rules_hand_computed(rule, weights, expected):
    combined, _ = combine_rewards({"a": R1, "b": R2}, rule=rule, weights=weights)
    assert combined.dtype == torch.float32 and combined.tolist() == pytest.approx(expected)


def test_metrics_per_source():
    _, metrics = combine_rewards({"a": R1, "b": R2})
    # a: mean (1 + 0 + .5) / 3 = .5; deviations .5, -.5, 0 -> variance .5/3 = 1/6 -> std 0.408248
    # b: mean (.5 + 2 - 1) / 3 = .5; deviations 0, 1.5, -1.5 -> variance 4.5/3 = 1.5 -> std 1.224745
    assert metrics == pytest.approx(
        {"reward/a_mean": 0.5, "reward/a_std": (1 / 6) ** 0.5, "reward/b_mean": 0.5, "reward/b_std": 1.5**0.5}
    )


def test_single_source_single_sample():
    combined, metrics = combine_rewards({"only": torch.tensor([3.0])}, rule="mean")
    assert combined.tolist() == [3.0] and metrics == {"reward/only_mean": 3.0, "reward/only_std": 0.0}


def test_integer_and_bool_sources_are_promoted():
    combined, _ = combine_rewards({"a": torch.tensor([1, 0]), "b": torch.tensor([True, True])}, rule="sum")
    assert combined.dtype == torch.float32 and combined.tolist() == [2.0, 1.0]


def test_weighted_is_sum_with_unit_weights_and_order_free():
    a, b = torch.randn(8), torch.randn(8)
    w, _ = combine_rewards({"a": a, "b": b}, rule="weighted", weights={"b": 1.0, "a": 1.0})
    s, _ = combine_rewards({"b": b, "a": a}, rule="sum")
    torch.testing.assert_close(w, s)


def test_unknown_rule():
    with pytest.raises(ValueError, match=r"unknown reward combination rule 'max'; choose one of \['sum', 'mean'"):
        combine_rewards({"a": R1}, rule="max")


def test_weight_keys_must_match_sources():
    with pytest.raises(ValueError, match=r"missing weights for \['b'\], weights for unknown sources \['c'\]"):
        combine_rewards({"a": R1, "b": R2}, rule="weighted", weights={"a": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match="rule 'weighted' needs weights"):
        combine_rewards({"a": R1}, rule="weighted")
    with pytest.raises(ValueError, match="weights are only used by rule 'weighted', not 'sum'"):
        combine_rewards({"a": R1}, rule="sum", weights={"a": 1.0})


def test_shape_errors():
    with pytest.raises(ValueError, match=r"same length \[B\]; got shapes \{'a': \(3,\), 'b': \(2,\)\}"):
        combine_rewards({"a": R1, "b": torch.zeros(2)})
    with pytest.raises(ValueError, match="1-D tensors"):
        combine_rewards({"a": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="at least one reward source"):
        combine_rewards({})
