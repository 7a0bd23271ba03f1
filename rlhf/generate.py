"""Generate responses from a model (a trained `final/` folder, a hub name, `tiny:<arch>`): prompts in, JSONL out.

  python -m rlhf.generate model.name_or_path=outputs/<date>/<time>/final            # CPU: the data preset's eval prompts
  python -m rlhf.generate model.name_or_path=<dir> hw=h100x1 generate.prompts=my.jsonl \
      generate.n=8 generate.temperature=0.8 generate.out=samples.jsonl                # one GPU (vLLM when installed)
  python -m rlhf.generate model.name_or_path=<dir> hw=h100x8 rollout.tensor_parallel_size=8 data=math_prompts
                                                                                      # one node, a model over 8 GPUs
  srun --gpus=1 python -m rlhf.generate model.name_or_path=<dir> hw=h100x1 generate.prompts=my.jsonl    # Slurm

Prompts: `generate.prompts` (.jsonl/.json rows with a `generate.prompt_key` string or chat messages, or .txt,
one prompt a line), else the eval split of `data=` (the prompts training held out). Prompts are rendered as
training renders them (data.apply_chat_template, data.input_template). Each output line holds the prompt, the
response (or `responses` when generate.n > 1) and the row's other fields. temperature=0 decodes greedily.
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


def generate(cfg) -> Path:
    """Run cfg.generate (a typed RunConfig); returns the path of the JSONL written."""
    from rlhf.evaluation.driver import Sampling
    from rlhf.evaluation.generation import build_generate
    from rlhf.evaluation.prompts import file_rows, preset_rows
    from rlhf.models.loading import load_tokenizer

    g = cfg.generate
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    rows = (
        file_rows(g.prompts, g.prompt_key, tokenizer, cfg.data, condition=g.condition)
        if g.prompts
        else preset_rows(_conditioned(cfg.data, g.condition), tokenizer, "eval", seed=cfg.seed)
    )
    if g.max_prompts:
        rows = rows[: g.max_prompts]
    gen = build_generate(cfg, tokenizer, g.backend, batch_size=g.batch_size)
    sampling = Sampling(
        n=g.n,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        max_new_tokens=g.max_new_tokens or cfg.rollout.max_new_tokens,
        seed=g.seed,
    )
    t0 = time.time()
    outs = gen(rows, sampling)
    seconds = time.time() - t0
    out = Path(g.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row, comps in zip(rows, outs):
            rec = {"prompt": row.get("text"), **(row.get("fields") or {})}
            if g.n == 1:
                rec["response"] = comps[0].text
                rec["finish_reason"] = comps[0].finish_reason
            else:
                rec["responses"] = [c.text for c in comps]
                rec["finish_reasons"] = [c.finish_reason for c in comps]
            f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    tokens = sum(c.num_tokens for comps in outs for c in comps)
    print(
        f"generated {len(rows)} prompt(s) x {g.n} with {type(gen).__name__} in {seconds:.1f}s "
        f"({tokens / max(seconds, 1e-9):.0f} tokens/s) -> {out}"
    )
    if hasattr(gen, "close"):
        gen.close()
    return out


def _conditioned(data, condition: Optional[str]):
    """The data preset with `condition` (literal text) in front of its prompts, as algo=csft trained them."""
    if not condition:
        return data
    from rlhf.config.algo import with_condition

    return with_condition(data, condition.replace("{", "{{").replace("}", "}}"))


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def hydra_main(dcfg: DictConfig) -> Optional[float]:
    from rlhf.evaluation.entry import check
    from rlhf.quiet import set_verbose

    cfg = OmegaConf.to_object(dcfg)
    if cfg.verbose:
        set_verbose(True)
    check(cfg)
    generate(cfg)
    return None


def main() -> None:
    from rlhf.evaluation.entry import run_entry

    run_entry(hydra_main)


if __name__ == "__main__":
    main()
