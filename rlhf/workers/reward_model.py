"""A reward-model role: scores prompt+response texts with a sequence classifier (its own tokenizer)."""

from __future__ import annotations

import time

from rlhf.workers.base import RankWorker


class RewardModelWorker(RankWorker):
    def __init__(self, rank: int, world_size: int, model_cfg, path: str, dtype: str, device: str, batch_size: int):
        super().__init__(rank, world_size)
        self.model_cfg, self.path, self.dtype, self.device_kind, self.batch_size = (
            model_cfg,
            path,
            dtype,
            device,
            batch_size,
        )

    def setup(self) -> dict:
        from dataclasses import replace

        from rlhf.config.engine import EngineConfig
        from rlhf.engines.deepspeed import build_frozen
        from rlhf.models.loading import load_sequence_classifier, load_tokenizer

        t0 = time.time()
        cfg = replace(self.model_cfg, name_or_path=self.path, tokenizer=None, lora=replace(self.model_cfg.lora, rank=0))
        with self.phase("model"):
            self.tokenizer = load_tokenizer(cfg, padding_side="right")
            model = load_sequence_classifier(
                cfg,
                dtype=self.dtype,
                device=self.device_kind,
                trainable=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        with self.phase("engine"):
            self.model = build_frozen(
                model, engine=EngineConfig(zero_stage=0), world_size=1, dtype=self.dtype, micro_batch=self.batch_size
            )
        return {"setup_s": time.time() - t0}

    def score(self, texts: list[str]):
        """Scalar rewards [N] for full conversation texts (prompt + response, as the policy saw them)."""
        from rlhf.models.loading import score_texts

        return score_texts(self.model, self.tokenizer, texts, self.batch_size, next(self.model.parameters()).device)
