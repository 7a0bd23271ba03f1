"""A process reward model as a reward function: each response is cut into steps, scored step by step, reduced.

    reward=prm reward.sources.prm.kwargs.model=outputs/<run>/final reward.sources.prm.kwargs.reduction=min

The model is the `final/` folder of an `algo=prm` run; its `prm.json` names the step placeholder and the reward
tokens it was trained with. A response's steps are its non-empty lines; the scored text is laid out as training
laid it out (rlhf/data/templates.py tokenize_prm): prompt, then each step followed by the placeholder, steps
joined by a newline. P(step correct) = softmax over the (positive, negative) reward-token logits at each
placeholder (rlhf/algos/prm.py prm_step_scores); `reduction` (min, last, mean, prod) makes one reward of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

STEP_SEPARATOR = "\n"


class ProcessReward:
    """(prompts, responses) -> one reward a response, from a process reward model loaded in this process."""

    def __init__(
        self, model: Optional[str] = None, reduction: str = "min", batch_size: int = 16, device: Optional[str] = None
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlhf.algos.prm import STEP_SCORE_REDUCTIONS, single_token_ids
        from rlhf.models.loading import resolve_path

        if reduction not in STEP_SCORE_REDUCTIONS:
            raise ValueError(
                f"reward.sources.prm.kwargs.reduction={reduction!r}: choose one of {sorted(STEP_SCORE_REDUCTIONS)}"
            )
        if not model:
            raise ValueError(
                "reward=prm needs the process reward model: set reward.sources.prm.kwargs.model=<the final/ folder "
                "of an algo=prm run> (conf/reward/prm.yaml)"
            )
        path = Path(resolve_path(model))
        info_file = path / "prm.json"
        if not info_file.is_file():
            raise ValueError(
                f"reward.sources.prm.kwargs.model={model!r} has no prm.json: point it at the final/ folder of an "
                "algo=prm run (which writes the placeholder and reward tokens there)"
            )
        info = json.loads(info_file.read_text())
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(self.device).eval()
        self.tag_id = single_token_ids(self.tok, [info["placeholder_token"]], "prm.json placeholder_token")[0]
        self.pos_id, self.neg_id = single_token_ids(self.tok, info["reward_tokens"][:2], "prm.json reward_tokens")
        self.reduction, self.batch_size = reduction, max(1, batch_size)
        self._torch = torch

    def encode(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """Token ids of prompt + tagged steps, and the tag mask (1 at each placeholder)."""
        ids = self.tok.encode(prompt, add_special_tokens=False)
        mask = [0] * len(ids)
        steps = [s.strip() for s in response.split(STEP_SEPARATOR) if s.strip()]
        for i, step in enumerate(steps):
            step_ids = self.tok.encode((STEP_SEPARATOR if i else "") + step, add_special_tokens=False) + [self.tag_id]
            ids += step_ids
            mask += [0] * (len(step_ids) - 1) + [1]
        return ids, mask

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        from rlhf.algos.prm import prm_step_scores, reduce_step_scores

        torch = self._torch
        out: list[float] = []
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        for i in range(0, len(prompts), self.batch_size):
            enc = [
                self.encode(p, r) for p, r in zip(prompts[i : i + self.batch_size], responses[i : i + self.batch_size])
            ]
            width = max(len(e[0]) for e in enc)
            ids = torch.full((len(enc), width), pad, dtype=torch.long)
            att = torch.zeros((len(enc), width), dtype=torch.long)
            tags = torch.zeros((len(enc), width), dtype=torch.bool)
            for j, (x, m) in enumerate(enc):
                ids[j, : len(x)], att[j, : len(x)] = torch.tensor(x), 1
                tags[j, : len(m)] = torch.tensor(m, dtype=torch.bool)
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=att.to(self.device)).logits
            scores = prm_step_scores(logits, tags.to(self.device), self.pos_id, self.neg_id)
            out += reduce_step_scores(scores, tags.to(self.device), self.reduction).cpu().tolist()
        return out
