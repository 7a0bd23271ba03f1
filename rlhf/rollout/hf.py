"""HF generate on the trained module itself (``rollout.backend=hf``): no second copy of the weights, so
nothing to sync; slow, for CPU runs and small GPUs."""

from __future__ import annotations

import time

from rlhf.config.rollout import RolloutConfig
from rlhf.rollout.base import Timings
from rlhf.types import PromptBatch, RolloutBatch


def no_router_loss(model) -> dict:
    """generate() kwargs turning a mixture-of-experts model's router loss off (it is computed against the whole
    attention mask, which a KV-cached step's router logits do not match); none for other models."""
    return {"output_router_logits": False} if getattr(model.config, "output_router_logits", False) else {}


class HFGenerator:
    """``engine`` is the policy's TrainEngine (its ``module`` generates, on its ``device``)."""

    def __init__(self, engine, rollout: RolloutConfig, *, eos_ids: set[int], pad_id: int, rank: int):
        self.engine, self.ro, self.eos_ids, self.pad_id, self.rank = engine, rollout, eos_ids, pad_id, rank

    def generate(self, prompts: PromptBatch, *, seed: int, greedy: bool) -> tuple[RolloutBatch, Timings]:
        """Responses right-padded to rollout.max_new_tokens; rollout_logps temperature-scaled from the
        generation's own logits (untempered when greedy)."""
        import torch

        from rlhf.training.sequences import action_mask_from

        ro, pad = self.ro, self.pad_id
        module = self.engine.module
        module.eval()
        torch.manual_seed(seed + self.rank)
        ids, am = prompts.input_ids, prompts.attention_mask
        seqs, masks, logps = [], [], []
        t0 = time.time()
        for i in range(0, len(ids), ro.generate_batch):
            x = ids[i : i + ro.generate_batch].to(self.engine.device)
            a = am[i : i + ro.generate_batch].to(self.engine.device)
            with torch.no_grad():
                out = module.generate(
                    input_ids=x,
                    attention_mask=a,
                    do_sample=ro.temperature > 0 and not greedy,
                    temperature=max(ro.temperature, 1e-5),
                    top_p=ro.top_p,
                    top_k=ro.top_k if ro.top_k > 0 else 0,
                    max_new_tokens=ro.max_new_tokens,
                    min_new_tokens=ro.max_new_tokens if ro.ignore_eos else 0,
                    pad_token_id=pad,
                    eos_token_id=sorted(self.eos_ids),
                    use_cache=True,
                    return_dict_in_generate=True,
                    output_logits=True,
                    **no_router_loss(module),
                )
            resp = out.sequences[:, x.shape[1] :]
            temperature = 1.0 if greedy else max(ro.temperature, 1e-5)
            # One step's [B, vocab] at a time: stacking all steps first would hold three more copies of the
            # [B, new tokens, vocab] logits (the stack, the scaled and the log-softmax), 4 bytes an entry each.
            lp = torch.stack(
                [
                    torch.log_softmax(step.float() / temperature, -1).gather(-1, resp[:, t : t + 1]).squeeze(-1)
                    for t, step in enumerate(out.logits)
                ],
                1,
            )
            del out
            r = resp.shape[1]
            if r < ro.max_new_tokens:
                fill = ro.max_new_tokens - r
                resp = torch.nn.functional.pad(resp, (0, fill), value=pad)
                lp = torch.nn.functional.pad(lp, (0, fill), value=0.0)
            mask = action_mask_from(resp, set() if ro.ignore_eos else self.eos_ids, pad)
            seqs.append(torch.cat([x, resp], 1).cpu())
            masks.append(mask.cpu())
            logps.append((lp * mask).cpu())
        module.train()
        action_mask = torch.cat(masks)
        sequences = torch.cat(seqs)
        p = ids.shape[1]
        # "length" when the response filled max_new_tokens without an EOS (as vLLM reports it).
        ended = [
            bool(set(row[m.bool()].tolist()) & self.eos_ids) and not ro.ignore_eos
            for row, m in zip(sequences[:, p:], action_mask)
        ]
        batch = RolloutBatch(
            sequences=sequences,
            attention_mask=torch.cat([am, action_mask], 1),
            action_mask=action_mask,
            rollout_logps=torch.cat(logps),
            finish_reason=["stop" if e else "length" for e in ended],
            prompt_len=p,
        )
        return batch, {"timing/generate_engine_s": time.time() - t0}

    def load_weights(self) -> Timings:
        return {}

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def close(self) -> None:
        pass
