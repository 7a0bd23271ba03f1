"""Schemas of the `eval` and `generate` nodes: sampling and scoring settings of `rlhf.eval`, `rlhf.generate`
and of the evaluation a training run does every `algo.eval_every` steps and at its start and end.

`eval` serves training and `rlhf.eval` alike, so a number measured during training is the number `rlhf.eval`
gives for the saved model with the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class EvalConfig:
    # Held-out prompts scored (the first N of the data's eval split; None: all of them).
    max_prompts: Optional[int] = 64
    # One greedy response per prompt: eval/accuracy and eval/reward_mean.
    greedy: bool = True
    # Sampled responses per prompt (0: none); with them eval/pass@k, eval/maj@k and eval/sampled_accuracy.
    n_samples: int = 0
    # The k of pass@k and maj@k, each at most n_samples.
    k: List[int] = field(default_factory=lambda: [1])
    # Sampling of the sampled responses (None: the rollout's, as training samples). During training the policy
    # ranks sample with the rollout's settings, so there these must be null or equal to them.
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    # Response length (None: rollout.max_new_tokens, the length training samples).
    max_new_tokens: Optional[int] = None
    seed: int = 12345
    # The reward source whose score says a response is correct (None: `exact_match` when configured, else the
    # only source); accuracy is the fraction scoring >= correct_threshold.
    accuracy_source: Optional[str] = None
    correct_threshold: float = 1.0
    # `module:function` giving a response's final answer (None when it has none), for maj@k votes.
    answer_extractor: str = "rlhf.rewards.functions:extract_answer"
    # rlhf.eval: where the per-response records go (None: <output_dir>/eval.jsonl).
    out: Optional[str] = None


@dataclass
class GenerateConfig:
    # A prompts file (.jsonl, .json or .txt, one prompt a line); None: the eval split of the `data` preset.
    prompts: Optional[str] = None
    # Row key holding the prompt in a .jsonl/.json file: a string, or a list of chat messages.
    prompt_key: str = "prompt"
    # Output JSONL: one line a prompt with its response(s) and the row's other fields.
    out: str = "generations.jsonl"
    max_prompts: Optional[int] = None
    n: int = 1
    # 0 decodes greedily.
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    # None: rollout.max_new_tokens.
    max_new_tokens: Optional[int] = None
    seed: int = 0
    # auto: vLLM when it is installed and the machine has a GPU, else transformers' generate; hf; vllm.
    backend: str = "auto"
    # Prompts generated at once (hf backend).
    batch_size: int = 64
    # Text put in front of every string prompt (before the chat template), e.g. the quality condition a
    # conditional-SFT model (algo=csft) was trained with: 'generate.condition="<rm_score>: 1.0 "' (quoted for Hydra).
    condition: Optional[str] = None
