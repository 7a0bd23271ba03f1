"""The KL term the shipped algorithms put in their loss keeps a bounded gradient where the policy left the reference."""

from __future__ import annotations

import pytest
import torch

from rlhf.algos.kl import kl_penalty
from rlhf.config.preflight import compose_config


@pytest.mark.parametrize("algo", ["grpo", "reinforce_pp_baseline", "dr_grpo", "reinforce_pp", "rloo", "ppo"])
def test_shipped_kl_estimator_has_a_bounded_gradient(algo):
    cfg = compose_config([f"algo={algo}", "algo.kl_coef=0.01"])
    kind = cfg.algo.kl_estimator
    if cfg.algo.kl_in != "loss":
        pytest.skip(f"{algo} folds the KL into the reward (kl_in={cfg.algo.kl_in}): no gradient flows through it")
    # A token the policy now finds e^15 times likelier than the reference did: d = log pi - log ref = 15.
    # k3 = exp(-d) + d - 1 has d/dd = 1 - exp(-d): fine here; on the other side, d = -15 (the policy moved
    # away from a token the reference likes), d/dd = 1 - e^15 ~ -3.3e6, and at d = -20, ~ -4.9e8: one such token
    # swamps the policy gradient. low_var_kl clamps k3 at 10, so its gradient there is 0 and at most
    # |1 - e^2.61| ~ 12.6 just inside the clamp (k3(-2.61) ~ 10); k1's is 1 and k2's is |d| = 15.
    d = torch.tensor([[-15.0, -1.0, 0.0, 1.0, 15.0]], requires_grad=True)
    kl = kl_penalty(d, torch.zeros_like(d), kind)
    kl.sum().backward()
    assert torch.isfinite(kl).all()
    assert d.grad.abs().max().item() <= 25.0, f"{algo} uses kl_estimator={kind}: gradient {d.grad.tolist()}"


def test_plain_k3_stays_available_and_is_the_unbounded_one():
    d = torch.tensor([-15.0], requires_grad=True)
    kl_penalty(d, torch.zeros_like(d), "k3").sum().backward()
    # d/dd (exp(-d) + d - 1) = 1 - exp(-d) = 1 - e^15 = -3269016.37...
    assert d.grad.item() == pytest.approx(1 - torch.exp(torch.tensor(15.0)).item(), rel=1e-5)
