import math

import pytest
import torch

from rlhf.algos.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    build_kl_controller,
    kl_penalty,
)

# log-ratios d = logp - ref_logp of 0, 1, -1, ln 2
REF = torch.tensor([-1.0, -2.0, -1.0, -2.0])
LOGP = REF + torch.tensor([0.0, 1.0, -1.0, math.log(2.0)])

EXPECTED = {
    "k1": [0.0, 1.0, -1.0, 0.693147],  # d
    "abs": [0.0, 1.0, 1.0, 0.693147],  # |d|
    "k2": [0.0, 0.5, 0.5, 0.240227],  # 0.5 d^2; 0.5 * 0.480453
    # exp(ref - logp) - (ref - logp) - 1: e^0 - 0 - 1 = 0; e^-1 + 1 - 1 = 0.367879; e^1 - 1 - 1 = 0.718282;
    # e^-ln2 + ln2 - 1 = 0.5 + 0.693147 - 1 = 0.193147
    "k3": [0.0, 0.367879, 0.718282, 0.193147],
    "low_var_kl": [0.0, 0.367879, 0.718282, 0.193147],
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_kl_kinds_hand_values(kind):
    torch.testing.assert_close(kl_penalty(LOGP, REF, kind), torch.tensor(EXPECTED[kind]), rtol=0, atol=1e-6)


def test_registry_covers_the_tested_kinds():
    assert sorted(KL_ESTIMATORS) == sorted(EXPECTED)


def test_k3_clamps_for_stability():
    # d = -30: ref - logp = 30 is clamped to 20 -> e^20 - 20 - 1 = 485165174.4, finite; low_var_kl caps at 10
    logp, ref = torch.tensor([-31.0]), torch.tensor([-1.0])
    k3 = kl_penalty(logp, ref, "k3")
    assert torch.isfinite(k3).all() and k3.item() == pytest.approx(math.exp(20) - 21, rel=1e-6)
    assert kl_penalty(logp, ref, "low_var_kl").item() == 10.0
    # an overflow without the clamp: exp(100) is inf in fp32
    assert kl_penalty(torch.tensor([-101.0]), ref, "k3").isfinite().all()


def test_k1_and_k3_are_unbiased_and_k3_has_lower_variance():
    # Samples from p; KL(p || q) = 0.5 ln(0.5/0.2) + 0.3 ln 1 + 0.2 ln(0.2/0.5) = 0.3 ln 2.5 = 0.274887
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    idx = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    logp, ref = p.log()[idx], q.log()[idx]
    k1, k3 = kl_penalty(logp, ref, "k1"), kl_penalty(logp, ref, "k3")
    assert k1.mean().item() == pytest.approx(0.274887, abs=0.01)
    assert k3.mean().item() == pytest.approx(0.274887, abs=0.01)
    assert k3.var() < k1.var()


def test_kl_penalty_errors():
    with pytest.raises(
        ValueError, match=r"unknown KL estimator 'k4'.*algo\.kl_estimator.*valid names: abs, k1, k2, k3, low_var_kl"
    ):
        kl_penalty(LOGP, REF, "k4")
    with pytest.raises(ValueError, match="same shape"):
        kl_penalty(LOGP, REF[:2], "k1")


def test_fixed_controller():
    ctl = FixedKLController(0.1)
    ctl.update(current_kl=100.0, n_steps=1000)
    assert ctl.value == 0.1


def test_adaptive_controller_hand_values():
    ctl = AdaptiveKLController(init_coef=0.2, target=6.0, horizon=10000)
    # KL 9: error = clip(9/6 - 1 = 0.5, -0.2, 0.2) = 0.2; factor 1 + 0.2 * 1000 / 10000 = 1.02 -> 0.204
    ctl.update(current_kl=9.0, n_steps=1000)
    assert ctl.value == pytest.approx(0.204)
    # KL 5.4: error = 5.4/6 - 1 = -0.1; factor 1 - 0.1 * 500 / 10000 = 0.995 -> 0.204 * 0.995 = 0.20298
    ctl.update(current_kl=5.4, n_steps=500)
    assert ctl.value == pytest.approx(0.20298)


def test_build_kl_controller():
    assert isinstance(build_kl_controller("fixed", coef=0.05), FixedKLController)
    ctl = build_kl_controller("adaptive", coef=0.05, target=3.0, horizon=100)
    assert isinstance(ctl, AdaptiveKLController) and ctl.value == 0.05 and ctl.target == 3.0
    with pytest.raises(ValueError, match="kl_target"):
        build_kl_controller("adaptive", coef=0.05)
    with pytest.raises(ValueError, match="valid names: adaptive, fixed"):
        build_kl_controller("pid", coef=0.05)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, 1.0, 0)
    with pytest.raises(ValueError, match="kl_coef"):
        FixedKLController(-1.0)
