"""Model-scale training defaults: the learning rate and batch a run gets when neither the command line, a
tuning file nor the model preset gives them. One table, by algorithm family and model size.

Where the numbers come from (OpenRLHF examples/scripts, 7B-8B Llama models unless noted):
  train_sft_llama.sh        --learning_rate 5e-6  --train_batch_size 128
  train_rm_llama.sh         --learning_rate 9e-6  --train_batch_size 128
  train_dpo_llama.sh        --learning_rate 5e-7  --train_batch_size 256   (pairs; also IPO, cDPO)
  train_ppo_llama_ray.sh    --actor_learning_rate 5e-7 --critic_learning_rate 9e-6 --train_batch_size 128
                            --rollout_batch_size 1024 (8 optimizer steps per rollout batch)
  train_ppo_llama_ray_70b.sh  the same rates for Llama-3-70B
Models under 3B take larger steps (TRL's SFT/DPO examples on Qwen2-0.5B use 2e-5 and 5e-7 to 1e-6), models
over 30B smaller SFT/RM steps. On-policy rollouts default to 4 optimizer steps per rollout batch (the GRPO
tuning files of conf/tuning/) rather than OpenRLHF's 8, so one step's generation stays short.
KTO counts single samples (desirable or not); it gets DPO's rate and batch.
"""

from __future__ import annotations

# family -> (lr below 3B, 3B-30B, above 30B)
_LR = {
    "sft": (2e-5, 5e-6, 2e-6),
    "rm": (1e-5, 9e-6, 5e-6),
    "preference": (1e-6, 5e-7, 5e-7),
    "onpolicy": (1e-6, 5e-7, 5e-7),
}
CRITIC_LR = 9e-6
_BATCH = {"sft": 128, "rm": 128, "preference": 256, "onpolicy": 128}
ROLLOUT_STEPS = 4
# The largest micro-batch the planner tries: beyond 8-16 sequences of the usual lengths (1-4k tokens) a GPU is
# saturated and only memory grows. Short sequences go further, up to MICRO_TOKENS tokens a micro-batch: every
# micro-batch pays its kernel launches and DeepSpeed's per-micro-batch work, which on small models and short
# rollouts (128-token answers) costs more than the arithmetic.
MAX_MICRO = 16
MICRO_TOKENS = 16384


def micro_cap(seq_len: int) -> int:
    """The largest micro-batch worth trying for sequences of ``seq_len`` tokens."""
    return max(MAX_MICRO, MICRO_TOKENS // max(seq_len, 1))


def family(algo_name: str, onpolicy: bool) -> str:
    if onpolicy:
        return "onpolicy"
    if algo_name in ("sft", "pretrain", "prm", "kd", "csft", "rejection_sampling"):
        return "sft"
    if algo_name == "rm":
        return "rm"
    return "preference"


def learning_rate(algo_name: str, onpolicy: bool, params_b: float) -> float:
    small, mid, large = _LR[family(algo_name, onpolicy)]
    return small if params_b < 3 else (mid if params_b <= 30 else large)


# LoRA trains best at about ten times the full fine-tuning rate, across model sizes and for SFT and RL alike
# (Schulman et al., "LoRA Without Regret", Thinking Machines, 2025); the rule's rates are full fine-tuning's.
LORA_LR_FACTOR = 10.0


def train_batch_samples(algo_name: str, onpolicy: bool) -> int:
    return _BATCH[family(algo_name, onpolicy)]


def source(algo_name: str, onpolicy: bool) -> str:
    """The script a default comes from, for the plan's notes."""
    script = {
        "sft": "train_sft_llama.sh",
        "rm": "train_rm_llama.sh",
        "preference": "train_dpo_llama.sh",
        "onpolicy": "train_ppo_llama_ray.sh",
    }[family(algo_name, onpolicy)]
    return f"rlhf/scale.py, after OpenRLHF examples/scripts/{script}"
