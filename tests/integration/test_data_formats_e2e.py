"""Public data formats end to end from local files written like the public sets, with only `data.train=` (and
sources or reward functions added with `+` on the command line): DPO on HH-RLHF + UltraFeedback, SFT on Alpaca +
ShareGPT, GRPO on GSM8K with the math reward plus a reward file, KTO on unpaired rows. Each run is a couple of
steps on the tiny chat model; the assertions read the tokenized rows of the run's own data back (prompt and
response spans, loss mask) and check that training moved the weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.integration.conftest import base_weights, weights

pytestmark = pytest.mark.timeout(900)

SHORT = ["algo.max_steps=2", "algo.train_batch_samples=8", "algo.micro_batch_per_gpu=4", "tracking.log_model=false"]


def _write(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _hh(i: int, answer: str) -> str:
    return f"\n\nHuman: What is {i} plus 1?\n\nAssistant: Let me see.\n\nHuman: Go on.\n\nAssistant: {answer}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("public")
    user = lambda i: {"role": "user", "content": f"What is {i} plus 2?"}  # noqa: E731
    return {
        "hh": _write(
            d / "hh.jsonl",
            [{"chosen": _hh(i, f"It is {i + 1}."), "rejected": _hh(i, "No idea, sorry.")} for i in range(24)],
        ),
        "uf": _write(
            d / "uf.jsonl",
            [
                {
                    "prompt": user(i)["content"],
                    "prompt_id": str(i),
                    "score_chosen": 8.0,
                    "chosen": [user(i), {"role": "assistant", "content": f"It is {i + 2}."}],
                    "rejected": [user(i), {"role": "assistant", "content": "Who knows."}],
                    "messages": [user(i), {"role": "assistant", "content": f"It is {i + 2}."}],
                }
                for i in range(24)
            ],
        ),
        "alpaca": _write(
            d / "alpaca.jsonl",
            [
                {"instruction": "Add the numbers.", "input": f"{i} and 3", "output": f"{i + 3}", "text": ""}
                if i % 2
                else {"instruction": f"Say {i}.", "input": "", "output": f"{i}", "text": ""}
                for i in range(24)
            ],
        ),
        "sharegpt": _write(
            d / "sharegpt.jsonl",
            [
                {
                    "conversations": [
                        {"from": "system", "value": "Answer with a number."},
                        {"from": "human", "value": f"{i} plus 4?"},
                        {"from": "gpt", "value": f"{i + 4}"},
                    ]
                }
                for i in range(24)
            ],
        ),
        "gsm8k": _write(
            d / "gsm8k.jsonl",
            [
                {
                    "question": f"Tom has {i} apples and buys 2 more. How many?",
                    "answer": f"{i} + 2 = <<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}",
                }
                for i in range(40)
            ],
        ),
        "kto": _write(
            d / "kto.jsonl",
            [
                {
                    "prompt": [{"role": "user", "content": f"What is {i} plus 1?"}],
                    "completion": [{"role": "assistant", "content": f"It is {i + 1}." if i % 2 else "Go away."}],
                    "label": bool(i % 2),
                }
                for i in range(32)
            ],
        ),
        "reward": str(_reward_file(d / "my_reward.py")),
    }


def _reward_file(path: Path) -> Path:
    path.write_text("def brevity(prompts, responses):\n    return [1.0 / (1.0 + len(r)) for r in responses]\n")
    return path


def _run(tmp_path: Path, *overrides: str):
    from rlhf.config.cli import rewrite_argv
    from rlhf.config.preflight import compose_config
    from rlhf.run import execute

    argv = rewrite_argv(
        [f"output_dir={tmp_path / 'out'}", f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db", *SHORT, *overrides]
    )
    dcfg = compose_config(argv)
    result = execute(dcfg, progress=False)
    assert result is not None and result.steps == 2, result
    return result, OmegaConf.to_object(dcfg)


def _samples_by_source(cfg, task: str, tokenizer):
    from rlhf.data.datasets import build_dataset

    ds = build_dataset(task, cfg.data, tokenizer, "train", seed=cfg.seed)
    out: dict = {}
    for s in ds.samples:
        out.setdefault(s["source"], []).append(s)
    return out


def _runs(tokenizer, ids, mask):
    runs, cur = [], []
    for t, m in zip(list(ids) + [None], list(mask) + [0]):
        if m:
            cur.append(t)
        elif cur:
            runs.append(tokenizer.decode(cur))
            cur = []
    return runs


def _moved(model_dir) -> None:
    before, after = base_weights(), weights(model_dir)
    assert [k for k in before if torch.equal(before[k], after[k])] == []


def _chat(tok, messages, gen: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def test_dpo_on_hh_rlhf_and_ultrafeedback(tmp_path, files, capsys):
    from transformers import AutoTokenizer

    result, cfg = _run(tmp_path, "algo=dpo", f"data.train={files['hh']}", f"+data.sources.uf.path={files['uf']}")
    printed = capsys.readouterr().out
    assert f"data: hh_rlhf format detected in {files['hh']}" in printed
    assert f"data: ultrafeedback format detected in {files['uf']}" in printed
    assert math.isfinite(result.last["train/loss"])
    _moved(result.model_dir)
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    by = _samples_by_source(cfg, "pair", tok)
    assert set(by) == {"train", "uf"}
    s = by["train"][0]
    prompt = tok.decode(s["chosen_ids"][: s["prompt_len"]])
    i = int(prompt.split("What is ")[1].split(" ")[0])
    history = [
        {"role": "user", "content": f"What is {i} plus 1?"},
        {"role": "assistant", "content": "Let me see."},
        {"role": "user", "content": "Go on."},
    ]
    # HH: the prompt is the history up to the last Assistant turn; the responses do not repeat it.
    assert prompt == _chat(tok, history, gen=True)
    assert [r.strip() for r in _runs(tok, s["chosen_ids"], s["chosen_mask"])] == [f"It is {i + 1}.{tok.eos_token}"]
    assert [r.strip() for r in _runs(tok, s["rejected_ids"], s["rejected_mask"])] == [f"No idea, sorry.{tok.eos_token}"]
    u = by["uf"][0]
    uprompt = tok.decode(u["chosen_ids"][: u["prompt_len"]])
    j = int(uprompt.split("What is ")[1].split(" ")[0])
    assert uprompt == _chat(tok, [{"role": "user", "content": f"What is {j} plus 2?"}], gen=True)
    assert [r.strip() for r in _runs(tok, u["rejected_ids"], u["rejected_mask"])] == [f"Who knows.{tok.eos_token}"]


def test_sft_on_alpaca_and_sharegpt(tmp_path, files, capsys):
    from transformers import AutoTokenizer

    result, cfg = _run(
        tmp_path,
        "algo=sft",
        "algo.epochs=1",
        f"data.train={files['alpaca']}",
        f"+data.sources.hermes.path={files['sharegpt']}",
    )
    printed = capsys.readouterr().out
    assert "data: alpaca format detected" in printed and "data: sharegpt format detected" in printed
    _moved(result.model_dir)
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    by = _samples_by_source(cfg, "sft", tok)
    texts = {tok.decode(s["input_ids"]) for s in by["train"]}
    # Alpaca: the input is in the prompt; a blank input leaves no dangling separator.
    with_input = next(t for t in texts if "Add the numbers." in t)
    assert "Add the numbers.\n\n" in with_input and " and 3" in with_input
    blank = next(t for t in texts if "Say " in t)
    k = blank.split("Say ")[1].split(".")[0]
    assert blank.startswith(_chat(tok, [{"role": "user", "content": f"Say {k}."}], gen=True))
    h = by["hermes"][0]
    full = tok.decode(h["input_ids"])
    assert "Answer with a number." in full  # the system turn is kept
    (trained,) = _runs(tok, h["input_ids"], h["loss_mask"])
    n = int(full.split("plus 4?")[0].split()[-1])
    assert trained.strip() == f"{n + 4}{tok.eos_token}"


def test_grpo_on_gsm8k_with_a_reward_file(tmp_path, files, capsys):
    result, cfg = _run(
        tmp_path,
        "algo=grpo",
        "algo.prompts_per_step=4",
        "rollout.max_new_tokens=8",
        f"data.train={files['gsm8k']}",
        f"+reward.sources.brevity.path={files['reward']}:brevity",
        "+reward.sources.brevity.weight=0.5",
    )
    printed = capsys.readouterr().out
    assert "data: gsm8k format detected" in printed
    assert set(cfg.reward.sources) == {"numeric_format", "exact_match", "brevity"}
    for key in ("rollout/reward_mean", "reward/brevity_mean", "train/policy_loss"):
        assert key in result.last and math.isfinite(result.last[key]), (key, sorted(result.last))
    _moved(result.model_dir)


def test_kto_on_unpaired_rows(tmp_path, files, capsys):
    from transformers import AutoTokenizer

    result, cfg = _run(tmp_path, "algo=kto", f"data.train={files['kto']}")
    assert "data: kto format detected" in capsys.readouterr().out
    assert math.isfinite(result.last["train/loss"])
    _moved(result.model_dir)
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    samples = _samples_by_source(cfg, "unpaired", tok)["train"]
    for s in samples[:6]:
        (trained,) = _runs(tok, s["input_ids"], s["loss_mask"])
        assert trained.startswith("It is") == s["label"], (trained, s["label"])
