"""Pure tensor math of RLHF: torch only, no Ray, DeepSpeed, vLLM or Transformers.

Modules:
    logprobs     token log-probs and entropies from logits (chunked, memory-lean), masked reductions
    aggregate    per-token loss -> scalar by mode, and the global-normalizer contract for accumulation
    sft          SFT negative log-likelihood and the causal-LM label shift
    reward       Bradley-Terry pairwise reward-model loss and accuracy
    preference   DPO, cDPO, IPO and KTO losses
    distill      knowledge distillation (forward KL to a teacher) mixed with NLL
    prm          process reward model loss and per-step scores
    kl           per-token KL estimators (k1, k2, k3, ...) and KL coefficient controllers
    advantages   advantage estimators (GAE, REINFORCE++, RLOO, GRPO, Dr.GRPO)
    policy_loss  PPO clipped surrogate (clip-higher, dual-clip), KL loss, entropy bonus
    value_loss   clipped critic loss
    shaping      reward clipping/normalization, overlong penalty, DAPO group filtering
    groups       the contiguous group layout of samples of one prompt
    lookup       name -> implementation with an error listing the valid names

Registries (dicts keyed by the names used in the config) are re-exported here: ADVANTAGE_ESTIMATORS,
AGG_MODES, DPO_LOSS_TYPES, KL_ESTIMATORS, KL_CONTROLLERS, PRM_LOSS_KINDS, STEP_SCORE_REDUCTIONS; with the sets
ESTIMATOR_NEEDS_CRITIC and GROUP_ESTIMATORS.
"""

from rlhf.algos.advantages import ADVANTAGE_ESTIMATORS, ESTIMATOR_NEEDS_CRITIC, GROUP_ESTIMATORS
from rlhf.algos.aggregate import AGG_MODES
from rlhf.algos.kl import KL_CONTROLLERS, KL_ESTIMATORS
from rlhf.algos.preference import DPO_LOSS_TYPES
from rlhf.algos.prm import PRM_LOSS_KINDS, STEP_SCORE_REDUCTIONS

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGG_MODES",
    "DPO_LOSS_TYPES",
    "ESTIMATOR_NEEDS_CRITIC",
    "GROUP_ESTIMATORS",
    "KL_CONTROLLERS",
    "KL_ESTIMATORS",
    "PRM_LOSS_KINDS",
    "STEP_SCORE_REDUCTIONS",
]
