"""Schemas of the `algo` group: one dataclass per algorithm family, shared training fields in `TrainConfig`.

Batch fields say what they count: `train_batch_samples` is the number of samples (sequences; pairs for
preference algorithms) in one optimizer step across all data-parallel ranks, `micro_batch_per_gpu` the number
one rank runs through forward/backward at once. Gradient accumulation follows from them in `resolve_plan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING


@dataclass
class TrainConfig:
    # Registry key of the algorithm (rlhf/algos/registry.py maps it to a family and an objective).
    name: str = MISSING
    # None: the model preset's value for this algorithm, else the planner's rule by model size (rlhf/scale.py).
    lr: Optional[float] = None
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    max_grad_norm: float = 1.0
    # None: chosen by the planner (resolve_plan): the batch from the model preset or rlhf/scale.py, the
    # micro-batch the largest that divides it and fits the GPU.
    train_batch_samples: Optional[int] = None
    micro_batch_per_gpu: Optional[int] = None
    epochs: int = 1
    # Stop after this many optimizer steps (None: run all epochs).
    max_steps: Optional[int] = None
    # Wall-time budget: seconds or "HH:MM:SS" (None: no limit). The run stops at a step boundary in time to
    # save, evaluate and finish normally. Held-out evaluation every N steps (0: at the start and end only).
    max_time: Optional[str] = None
    eval_every: int = 0
    # Save resumable training state every N optimizer steps (0: only the final model).
    save_every: int = 0
    # Keep at most this many training-state checkpoints (the newest).
    keep_checkpoints: int = 2
    log_every: int = 1


@dataclass
class SFTConfig(TrainConfig):
    name: str = "sft"
    # Continued pre-training: loss on every token of plain text rows (input_key holds the text).
    pretrain_mode: bool = False


@dataclass
class RewardModelConfig(TrainConfig):
    name: str = "rm"
    # Row key of a per-pair margin (Llama-2 style margin loss); None: plain Bradley-Terry.
    margin_key: Optional[str] = None


@dataclass
class DPOConfig(TrainConfig):
    name: str = "dpo"
    beta: float = 0.1
    # sigmoid (DPO; cDPO with label_smoothing > 0) or ipo.
    loss: str = "sigmoid"
    # cDPO: assumed probability that a preference label is flipped.
    label_smoothing: float = 0.0
    # Add the chosen responses' NLL to the loss with this weight (RPO-style regularizer); 0 disables.
    nll_coef: float = 0.0
    # Reference model (None: the policy's initial weights).
    ref_name_or_path: Optional[str] = None


@dataclass
class KTOConfig(TrainConfig):
    name: str = "kto"
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    ref_name_or_path: Optional[str] = None


@dataclass
class RLConfig(TrainConfig):
    """On-policy RL (PPO, REINFORCE++, RLOO, GRPO, Dr.GRPO). A step = one rollout batch and its updates."""

    name: str = "grpo"
    # Advantage estimator (rlhf/algos/advantages.py): gae, reinforce_pp, reinforce_pp_baseline, rloo, grpo, dr_grpo.
    advantage: str = "grpo"
    # None: the model preset's rollout samples per step (or rlhf/scale.py's) over samples_per_prompt.
    prompts_per_step: Optional[int] = None
    samples_per_prompt: int = 4
    # Passes over each rollout batch (PPO epochs).
    update_epochs: int = 1
    gamma: float = 1.0
    lam: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    # Dual-clip constant for negative advantages (> 1), None disables.
    dual_clip: Optional[float] = None
    # Loss aggregation (rlhf/algos/aggregate.py): token_mean, seq_mean_token_mean, seq_mean_token_sum,
    # seq_mean_token_sum_norm.
    loss_agg: str = "token_mean"
    # KL to the reference model: coefficient 0 loads no reference model.
    kl_coef: float = 0.0
    # low_var_kl: k3 clamped at 10 (verl, OpenRLHF); plain k3 in the loss has unbounded gradients (k3 stays available)
    kl_estimator: str = "low_var_kl"
    # reward: KL penalty folded into per-token rewards; loss: a KL term in the policy loss.
    kl_in: str = "loss"
    # Adaptive KL controller target (None: fixed coefficient).
    kl_target: Optional[float] = None
    kl_horizon: int = 10000
    entropy_coef: float = 0.0
    # Critic (gae only).
    # None: the model preset's value, else rlhf/scale.py's.
    critic_lr: Optional[float] = None
    value_clip: Optional[float] = 0.2
    # Reward shaping.
    reward_clip: Optional[float] = None
    normalize_reward: bool = False
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    # DAPO dynamic sampling: drop groups whose rewards are all equal (no signal).
    dynamic_filtering: bool = False
    # Warn when rollout-engine and trainer log-probs differ by more than this (mean abs per token).
    logprob_mismatch_warn: float = 0.05
    # Surrogate of the policy loss (rlhf/algos/policy_loss.py POLICY_LOSSES): ppo (token ratio) or gspo
    # (length-normalized sequence ratio).
    policy_loss: str = "ppo"
    # Truncated importance sampling on the rollout/trainer log-prob ratio: each token's loss is weighted by
    # min(exp(old_logp - rollout_logp), tis_cap); null turns it off. 2.0 as TRL's and the TIS paper's default:
    # the engine's sampler and the trainer differ numerically (and by one update with an overlapped rollout).
    tis_cap: Optional[float] = 2.0
    # Token budget of one micro-batch in the log-prob and training passes (rows sorted and binned by length);
    # null: fixed micro-batches of the plan's micro_batch_per_gpu rows at the batch's width.
    max_tokens_per_micro: Optional[int] = None
    # Pack each micro-batch's sequences into one row (varlen attention; no padding at all).
    pack_sequences: bool = False
    async_rollout: bool = False  # one-step off-policy: step k+1 generates while step k trains (controllers/onpolicy.py)


@dataclass
class PRMConfig(TrainConfig):
    """Process reward model (Math-Shepherd, Wang et al. 2023; OpenRLHF's PRM trainer): a causal LM trained to
    predict a reward token at the step placeholder that ends each reasoning step."""

    name: str = "prm"
    # The one-token step separator written after each step (Math-Shepherd's "ки"); the tokenizer must keep it
    # whole (rlhf/data/templates.py tokenize_prm says so when it does not).
    placeholder_token: str = "ки"
    # Label tokens read at each placeholder, the positive (correct step) first: the model's logits over them
    # classify the step.
    reward_tokens: List[str] = field(default_factory=lambda: ["+", "-"])
    # hard: cross-entropy on the label (bool labels); soft: binary cross-entropy on P(correct) in [0, 1]
    # (Math-Shepherd's Monte-Carlo estimates). rlhf/algos/prm.py PRM_LOSS_KINDS.
    loss: str = "hard"

    @property
    def step_tag(self) -> str:
        # The name the data pipeline uses (rlhf/data/check.py, build_dataset(step_tag=...)).
        return self.placeholder_token


@dataclass
class TeacherConfig:
    # HF name/path or tiny:<arch> of the frozen teacher; any size, the same tokenizer (vocabulary) as the student.
    name_or_path: Optional[str] = None


@dataclass
class KDConfig(TrainConfig):
    """Knowledge distillation (Hinton et al. 2015) on an SFT data set: (1 - kd_coef) * NLL of the data +
    kd_coef * tau^2 * KL(teacher || student) at temperature tau, per response token (rlhf/algos/distill.py)."""

    name: str = "kd"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    kd_coef: float = 0.5
    temperature: float = 1.0

    @property
    def ref_name_or_path(self) -> Optional[str]:
        # The teacher is the run's frozen second model: the planner and the trainer load it as the reference.
        return self.teacher.name_or_path


@dataclass
class CSFTConfig(SFTConfig):
    """Conditional SFT (arXiv 2308.12050, SteerLM-style): each training prompt carries its quality score as a
    condition string; at inference the best condition is prepended (`python -m rlhf.generate
    generate.condition=...`)."""

    name: str = "csft"
    # Row field holding the score (a number); a row without it is a bad row.
    score_key: str = "score"
    # How the score is written in front of the prompt; {score} is the score rounded to score_digits.
    condition_template: str = "<rm_score>: {score} "

    def conditioned(self, data):
        """`data` with the condition in front of every source's prompt; {score} reads the row's score_key."""
        return with_condition(data, self.condition_template.replace("{score}", "{" + self.score_key + "}"))


def with_condition(data, condition: str):
    """A DataConfig whose every source renders its string prompts as `condition` + the prompt (before the chat
    template). `condition` is a prompt template: `{field}` names a row field; literal braces are doubled.
    Used by algo=csft while training and by `rlhf.generate generate.condition=...` at inference, so that both
    render the same text."""
    from dataclasses import replace

    sources = {
        name: replace(src, prompt_template=condition + (src.prompt_template or data.prompt_template or "{prompt}"))
        for name, src in data.sources.items()
    }
    return replace(data, sources=sources)


@dataclass
class SampleRoundsConfig:
    """Generation settings of the algorithms that sample from the current policy between training rounds."""

    # Responses sampled per prompt (best-of-N); HF generate on CPU, vLLM on a GPU when installed.
    samples_per_prompt: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    # None: rollout.max_new_tokens.
    max_new_tokens: Optional[int] = None
    # Prompts sampled each round (None: every training prompt of `data`).
    prompts_per_round: Optional[int] = None


@dataclass
class RejectionSamplingConfig(SFTConfig, SampleRoundsConfig):
    """Rejection sampling (best-of-N fine-tuning; Llama 2 sec. 3.2.3, RAFT arXiv 2304.06767): sample N responses
    per prompt, score them with the `reward` sources, keep each prompt's best if it reaches `threshold`, SFT on
    the kept ones; `rounds` times, each round from the previous round's model and a child MLflow run."""

    name: str = "rejection_sampling"
    rounds: int = 1
    # Keep a prompt's best response only when its reward is at least this (None: always keep it).
    threshold: Optional[float] = None


@dataclass
class IterativeDPOConfig(DPOConfig, SampleRoundsConfig):
    """Iterative (online) DPO (Xiong et al. 2024, arXiv 2312.11456; Snorkel/RLHFlow recipes): sample N responses
    per prompt from the current policy, pair each prompt's best and worst by reward, run DPO, repeat; each
    iteration a child MLflow run."""

    name: str = "iterative_dpo"
    iterations: int = 2
    # The reference of iteration k: the previous iteration's policy (true) or the initial model (false).
    refresh_reference: bool = True
    # Drop a prompt whose best and worst rewards differ by less than this (no preference to learn).
    min_margin: float = 1e-6
