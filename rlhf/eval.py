"""Evaluate a model on held-out prompts with the run's reward functions: mean reward, accuracy, pass@k, maj@k.

  python -m rlhf.eval model.name_or_path=outputs/<date>/<time>/final                 # CPU: the default task
  python -m rlhf.eval model.name_or_path=<dir> hw=h100x1 data=math_prompts reward=math \
      eval.n_samples=16 eval.k=[1,4,16] eval.temperature=0.8 eval.max_prompts=500      # one GPU (vLLM when installed)
  python -m rlhf.eval model.name_or_path=<dir> hw=h100x8 rollout.tensor_parallel_size=8 ...   # one node
  srun --gpus=1 python -m rlhf.eval model.name_or_path=<dir> hw=h100x1 eval.n_samples=8 eval.k=[1,8]   # Slurm

The held-out set is the eval split of `data=` (what training evaluates on); rewards are `reward=`'s sources.
accuracy is the fraction of greedy responses the verifiable source (eval.accuracy_source; default
`exact_match`) marks correct; with eval.n_samples > 0, pass@k (unbiased, Chen et al. 2021) and maj@k
(majority vote over eval.answer_extractor's answers) for each eval.k. Metrics print, go to
<output_dir>/eval_metrics.json (and MLflow unless tracking=none); one record a prompt goes to eval.out.
The same driver (rlhf/evaluation/driver.py) runs inside training every algo.eval_every steps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from rlhf.config.run import register_configs

register_configs()


def evaluate_model(cfg, output_dir: Path) -> dict:
    """Run cfg.eval on cfg.model; returns the metrics (also written under output_dir)."""
    from rlhf.evaluation.driver import evaluate
    from rlhf.evaluation.entry import reward_sources
    from rlhf.evaluation.generation import build_generate
    from rlhf.evaluation.prompts import preset_rows
    from rlhf.models.loading import load_tokenizer

    e, ro = cfg.eval, cfg.rollout
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    rows = preset_rows(cfg.data, tokenizer, "eval", seed=cfg.seed)
    if e.max_prompts:
        rows = rows[: e.max_prompts]
    gen = build_generate(cfg, tokenizer, cfg.generate.backend, batch_size=cfg.generate.batch_size)
    rewards = reward_sources(cfg)
    t0 = time.time()
    try:
        result = evaluate(
            rows,
            gen,
            rewards,
            e,
            max_new_tokens=ro.max_new_tokens,
            temperature=ro.temperature,
            top_p=ro.top_p,
            top_k=ro.top_k,
        )
    finally:
        rewards.close()
        if hasattr(gen, "close"):
            gen.close()
    metrics = {**result.metrics, "eval/prompts": float(len(rows)), "timing/eval_s": time.time() - t0}
    output_dir.mkdir(parents=True, exist_ok=True)
    out = Path(e.out) if e.out else output_dir / "eval.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for rec in result.records:
            f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    (output_dir / "eval_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _track(cfg, metrics, out)
    print(f"== rlhf.eval: {cfg.model.name_or_path} on {len(rows)} held-out prompt(s) of {list(cfg.data.sources)}")
    for k in sorted(metrics):
        print(f"   {k:<28} {metrics[k]:10.4f}")
    print(f"   records    {out}")
    return metrics


def _track(cfg, metrics: dict, records: Path) -> None:
    """The metrics as an MLflow run of their own (tag kind=eval), unless tracking=none."""
    from rlhf.tracking.mlflow_tracker import make_tracker

    tracker = make_tracker(cfg.tracking, run_name=f"eval-{Path(cfg.model.name_or_path).name}")
    status = "FAILED"
    try:
        tracker.set_tags({"kind": "eval", "model": cfg.model.name_or_path})
        tracker.log_params({"eval." + k: v for k, v in OmegaConf.to_container(OmegaConf.structured(cfg.eval)).items()})
        tracker.log_metrics(metrics, 0)
        tracker.log_text(json.dumps(metrics, indent=2), "eval_metrics.json")
        status = "FINISHED"
    finally:
        tracker.end(status)


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def hydra_main(dcfg: DictConfig) -> Optional[float]:
    from rlhf.evaluation.entry import check, output_dir
    from rlhf.quiet import set_verbose

    cfg = OmegaConf.to_object(dcfg)
    if cfg.verbose:
        set_verbose(True)
    check(cfg)
    metrics = evaluate_model(cfg, output_dir(cfg))
    return metrics.get("eval/accuracy", metrics.get("eval/reward_mean"))


def main() -> None:
    from rlhf.evaluation.entry import run_entry

    run_entry(hydra_main)


if __name__ == "__main__":
    main()
