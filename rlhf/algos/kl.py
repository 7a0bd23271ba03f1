"""Per-token KL estimators between the policy and the reference model, and KL coefficient controllers.

With a token y sampled from the policy pi and log-ratio d = log pi(y) - log ref(y), Schulman's note
"Approximating KL divergence" (2020) gives estimators of KL(pi || ref) (`KL_ESTIMATORS`, config key
`algo.kl_estimator`):

    k1          d                                   unbiased, high variance, can be negative
    abs         |d|
    k2          0.5 d^2                             biased (little when pi is close to ref), low variance, >= 0
    k3          exp(-d) + d - 1                     unbiased, low variance, >= 0
    low_var_kl  k3 clamped at 10                    bounds the worst token's value and gradient (as in the GRPO
                                                    recipes of verl)

For k3 the log-ratio is clamped to [-20, 20] before exp: the exp of a large negative log-ratio (a token the
policy now finds far likelier than the reference) would otherwise overflow to inf and poison the step.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Union

import torch

from rlhf.algos.lookup import lookup

# Log-ratio bound before exp in k3 (exp(20) ~ 5e8 stays finite in fp32 and bf16).
K3_LOG_RATIO_CLAMP = 20.0
# Per-token bound of low_var_kl.
LOW_VAR_KL_CLAMP = 10.0


def _k1(d: torch.Tensor) -> torch.Tensor:
    return d


def _abs(d: torch.Tensor) -> torch.Tensor:
    return d.abs()


def _k2(d: torch.Tensor) -> torch.Tensor:
    return 0.5 * d.square()


def _k3(d: torch.Tensor) -> torch.Tensor:
    neg = (-d).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)  # log ref/pi
    return neg.exp() - neg - 1.0


def _low_var_kl(d: torch.Tensor) -> torch.Tensor:
    return _k3(d).clamp(-LOW_VAR_KL_CLAMP, LOW_VAR_KL_CLAMP)


KL_ESTIMATORS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "k1": _k1,
    "abs": _abs,
    "k2": _k2,
    "k3": _k3,
    "low_var_kl": _low_var_kl,
}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL estimate of the given kind (see the module docstring).

    Args:
        logp: [B, T] policy log-probs of the sampled tokens.
        ref_logp: [B, T] reference log-probs of the same tokens.
        kind: a key of `KL_ESTIMATORS`.

    Returns:
        [B, T]; not masked (multiply by the mask or aggregate with it).
    """
    fn = lookup(KL_ESTIMATORS, kind, what="KL estimator", key="algo.kl_estimator")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} must have the same shape")
    return fn(logp - ref_logp)


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, coef: float):
        if coef < 0:
            raise ValueError(f"KL coefficient must be >= 0 (algo.kl_coef), got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Keep the coefficient (same interface as AdaptiveKLController)."""


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences").

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon).
    The coefficient grows when the measured KL is above target and shrinks below it, by at most 20% per
    `horizon` samples.
    """

    def __init__(self, init_coef: float, target: float, horizon: int):
        if init_coef < 0:
            raise ValueError(f"initial KL coefficient must be >= 0 (algo.kl_coef), got {init_coef}")
        if not target > 0:
            raise ValueError(f"KL target must be > 0 (algo.kl_target), got {target}")
        if not horizon > 0:
            raise ValueError(f"KL horizon must be > 0 (algo.kl_horizon), got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adapt the coefficient after `n_steps` samples (the paper's unit; a batch size) with mean KL `current_kl`."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


# Controller kinds: "adaptive" when algo.kl_target is set, else "fixed".
KL_CONTROLLERS = {"fixed": FixedKLController, "adaptive": AdaptiveKLController}


def build_kl_controller(
    kind: str, *, coef: float, target: Optional[float] = None, horizon: int = 10000
) -> Union[FixedKLController, AdaptiveKLController]:
    """Build a controller by name: "fixed" (coef) or "adaptive" (coef as initial value, target, horizon)."""
    cls = lookup(KL_CONTROLLERS, kind, what="KL controller")
    if cls is AdaptiveKLController:
        if target is None:
            raise ValueError("the adaptive KL controller needs a target KL (algo.kl_target)")
        return AdaptiveKLController(coef, target, horizon)
    return FixedKLController(coef)
