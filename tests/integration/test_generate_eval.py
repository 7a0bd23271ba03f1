"""`rlhf.generate` and `rlhf.eval` on the tiny chat model: greedy output equals transformers' own greedy decode
of the same model, and pass@k / accuracy come out as derived for a reward that marks exactly c of n samples
of each prompt correct. The entry points run as commands (Hydra, the conf/ tree) once each."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rlhf.config.preflight import compose_config

REPO = Path(__file__).resolve().parents[2]


def _cfg(*overrides: str):
    return OmegaConf.to_object(compose_config(["tracking=none", *overrides]))


def test_generate_greedy_equals_model_generate(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.generate import generate
    from rlhf.models.loading import resolve_path

    prompts = tmp_path / "prompts.jsonl"
    questions = ["What is 3 + 4?", "Compute 12 * 11.", "Which is larger, 41 or 17?", "Hello!", "Count from 4 to 8."]
    prompts.write_text("".join(json.dumps({"prompt": q, "id": i}) + "\n" for i, q in enumerate(questions)))
    out = generate(
        _cfg(
            f"generate.prompts={prompts}",
            f"generate.out={tmp_path / 'gen.jsonl'}",
            "generate.max_new_tokens=12",
            "generate.batch_size=3",
        )
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(len(questions)))  # order and the row's own fields kept

    path = resolve_path("tiny:llama_chat")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for q, row in zip(questions, rows):
        assert row["prompt"] == tok.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(row["prompt"], return_tensors="pt", add_special_tokens=False)
        ref = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        expected = tok.decode(ref[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        assert row["response"] == expected, (q, row["response"], expected)


def test_generate_refuses_identical_samples_and_bad_files(tmp_path: Path) -> None:
    from rlhf.config.validate import generate_problems
    from rlhf.evaluation.prompts import PromptFileError, read_prompt_file

    problems = generate_problems(_cfg("generate.n=4").generate)  # temperature 0 by default
    assert problems and "generate.temperature" in problems[0] and "4 identical" in problems[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"question": "no prompt key"}\n')
    with pytest.raises(PromptFileError, match=r"bad.jsonl:2: no 'prompt' key .*generate.prompt_key"):
        read_prompt_file(bad)
    txt = tmp_path / "p.txt"
    txt.write_text("What is 1 + 1?\n\nHello!\n")
    assert read_prompt_file(txt) == [{"prompt": "What is 1 + 1?"}, {"prompt": "Hello!"}]


# c correct samples out of n for a prompt whose answer is `a`: c = a mod (n + 1), so every c in 0..n occurs.
REWARD = '''
def score(prompts, responses, answer, **kwargs):
    """The i-th response of a prompt (responses of one prompt are contiguous) is correct iff i < c."""
    seen, out = {}, []
    for p, a in zip(prompts, answer):
        i = seen.get(p, 0)
        seen[p] = i + 1
        out.append(1.0 if i < int(a) % 5 else 0.0)
    return out
'''


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_eval_pass_at_k_on_a_reward_that_marks_c_of_n_correct(tmp_path: Path) -> None:
    from rlhf.eval import evaluate_model

    fn = tmp_path / "c_of_n.py"
    fn.write_text(REWARD)
    n = 4
    # The shipped arithmetic prompts: their answers vary, so c does too (the default task's are all 0).
    cfg = _cfg(
        "reward=math",
        f"reward.sources.exact_match.path={fn}:score",
        "eval.max_prompts=12",
        "data.sources.tiny_math.path=asset:prompts",
        f"eval.n_samples={n}",
        "eval.k=[1,2,4]",
        "eval.temperature=1.0",
        "rollout.max_new_tokens=6",
    )
    metrics = evaluate_model(cfg, tmp_path / "out")
    records = [json.loads(line) for line in (tmp_path / "out" / "eval.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(len(r["samples"]) == n for r in records)
    cs = [int(r["answer"]) % 5 for r in records]
    assert len(set(cs)) > 1, cs  # the set mixes prompts with different c
    assert [sum(r["sample_correct"]) for r in records] == cs
    for k in (1, 2, 4):
        expected = sum(_brute_pass_at_k(n, c, k) for c in cs) / len(cs)
        assert metrics[f"eval/pass_at_{k}"] == pytest.approx(expected, abs=1e-9), k
    # Greedy: one response a prompt, its first occurrence, correct iff c > 0.
    assert metrics["eval/accuracy"] == pytest.approx(sum(c > 0 for c in cs) / len(cs))
    assert metrics["eval/sampled_accuracy"] == pytest.approx(sum(cs) / (n * len(cs)))
    assert 0.0 <= metrics["eval/maj_at_4"] <= 1.0


@pytest.mark.timeout(600)
def test_generate_and_eval_commands(tmp_path: Path) -> None:
    """The documented commands: Hydra entry points on the conf/ tree, outputs where asked, no third-party noise."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    common = [f"hydra.run.dir={tmp_path}/hydra", "tracking=none", "model.name_or_path=tiny:llama_chat"]
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.generate",
            f"generate.out={tmp_path}/g.jsonl",
            "generate.max_prompts=3",
            "generate.n=2",
            "generate.temperature=1.0",
            *common,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["responses"]) == 2 and "answer" in r for r in rows)
    ev = subprocess.run(
        [sys.executable, "-m", "rlhf.eval", f"output_dir={tmp_path}/ev", "eval.max_prompts=4", *common],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads((tmp_path / "ev" / "eval_metrics.json").read_text())
    assert metrics["eval/prompts"] == 4 and 0.0 <= metrics["eval/accuracy"] <= 1.0
    assert "eval/accuracy" in ev.stdout
    assert "Warning" not in ev.stderr and "Setting accelerator" not in ev.stderr, ev.stderr[-2000:]
    bad = subprocess.run(
        [sys.executable, "-m", "rlhf.eval", "eval.n_samples=2", "eval.k=[4]", *common],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "eval.k=[4]" in bad.stderr, bad.stderr[-2000:]
