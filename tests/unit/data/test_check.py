"""The driver's data check (before any process starts) and the command-line forms of data: data.train/eval/format,
presets with a local copy, sources and reward sources added with `+`, in single runs and multiruns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlhf.config.cli import rewrite_argv
from rlhf.config.preflight import compose_config
from rlhf.data.check import DataCheckError, check_run_data
from rlhf.data.sources import resolve_data

ROOT = Path(__file__).resolve().parents[3]
HH = "\n\nHuman: What is {i} plus 1?\n\nAssistant: Let me see.\n\nHuman: Go on.\n\nAssistant: "


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    hh = [
        {"chosen": HH.format(i=i) + f"It is {i + 1}.", "rejected": HH.format(i=i) + f"It is {i + 7}, I think."}
        for i in range(40)
    ]
    user = lambda i: {"role": "user", "content": f"What is {i} plus 2?"}  # noqa: E731
    uf = [
        {
            "prompt": user(i)["content"],
            "chosen": [user(i), {"role": "assistant", "content": f"It is {i + 2}."}],
            "rejected": [user(i), {"role": "assistant", "content": "No idea."}],
            "score_chosen": 9.0,
        }
        for i in range(40)
    ]
    gsm = [
        {"question": f"Tom has {i} apples and buys 3. How many?", "answer": f"{i} + 3 = {i + 3}\n#### {i + 3}"}
        for i in range(40)
    ]
    return {
        "hh": _write(d / "hh.jsonl", hh),
        "uf": _write(d / "uf.jsonl", uf),
        "gsm": _write(d / "gsm8k.jsonl", gsm),
        "hh_test": _write(d / "hh_test.jsonl", hh[:8]),
        "dir": d,
    }


def typed(*overrides):
    return OmegaConf.to_object(compose_config(rewrite_argv(["tracking=none", *overrides])))


def test_data_train_alone_detects_the_format_and_holds_out_eval_rows(files):
    report = check_run_data(typed("algo=dpo", f"data.train={files['hh']}"))
    (s,) = report.sources
    assert (s.name, s.format, s.detected, s.good, s.rows) == ("train", "hh_rlhf", True, 40, 40)
    text = report.text()
    assert text.startswith(f"data: hh_rlhf format detected in {files['hh']}")
    assert "0.05 of the training rows held out (at most 500)" in text and "cut to data.max_len=256" in text


def test_presets_take_a_single_local_file_despite_their_hub_splits(files):
    # ultrafeedback names train_prefs/test_prefs and gsm8k 'test': a single file holds out rows instead.
    for preset, key, fmt in (
        ("ultrafeedback", "uf", "ultrafeedback"),
        ("gsm8k", "gsm", "gsm8k"),
        ("hh_rlhf", "hh", "hh_rlhf"),
    ):
        algo = "grpo" if preset == "gsm8k" else "dpo"
        cfg = typed(f"algo={algo}", f"data={preset}", f"data.train={files[key]}")
        (src,) = resolve_data(cfg.data).sources.values()
        assert src.path == str(files[key]) and src.format == fmt
        (s,) = check_run_data(cfg).sources
        assert s.good == 40 and "held out" in s.eval and "has no split" in s.eval, (preset, s.eval)


def test_separate_eval_file(files):
    cfg = typed("algo=dpo", f"data.train={files['hh']}", f"data.eval={files['hh_test']}")
    (s,) = check_run_data(cfg).sources
    assert s.eval.startswith(str(files["hh_test"])) and "(8 of the first 8 rows usable)" in s.eval


def test_eval_rows_follow_the_bad_row_policy_and_a_missing_eval_file_names_its_key(files, tmp_path):
    rows = [{"prompt": f"What is {i} plus 1?", "completion": f"{i + 1}"} for i in range(12)]
    train = _write(tmp_path / "pc.jsonl", rows)
    ev = _write(tmp_path / "ev.jsonl", rows[:3] + [{"prompt": "What is 9 plus 9?"}] + rows[3:9])
    # skip (the default): one bad eval row in ten is left out, as the run will.
    (s,) = check_run_data(typed("algo=sft", f"data.train={train}", f"data.eval={ev}")).sources
    assert "(9 of the first 10 rows usable)" in s.eval
    # error: the run would stop at that row mid-run; the check stops first, naming file:line and the key.
    with pytest.raises(DataCheckError) as info:
        check_run_data(typed("algo=sft", f"data.train={train}", f"data.eval={ev}", "data.bad_rows=error"))
    msg = str(info.value)
    assert "ev.jsonl:4, key data.sources.train.output_key: eval row: missing key 'response'" in msg
    assert "the response is read from 'response' or 'completion'" in msg and "data.bad_rows=skip" in msg
    # A missing eval file is the eval path's problem, not the training path's.
    with pytest.raises(DataCheckError) as info:
        check_run_data(typed("algo=sft", f"data.train={train}", f"data.eval={tmp_path}/nothere.jsonl"))
    msg = str(info.value)
    assert "key data.sources.train.eval_path:" in msg and "nothere.jsonl' was not found locally" in msg
    assert "data.sources.train.path" not in msg


def test_every_problem_is_listed_at_once_with_place_key_and_fix(files, tmp_path):
    notjson = _write(tmp_path / "broken.jsonl", ['{"prompt": ', "[1, 2]", "nope"])
    cfg = typed(
        "algo=grpo",
        f"+data.sources.hh.path={files['hh']}",
        f"+data.sources.broken.path={notjson}",
        "+data.sources.missing.path=./nowhere/x.jsonl",
    )
    with pytest.raises(DataCheckError) as info:
        check_run_data(cfg)
    msg = str(info.value)
    # The missing file, the unreadable one, and the `answer` field that math_exact_match (reward=numeric) reads
    # and HH rows lack; numeric_format reads no field.
    assert msg.startswith("the data check found 3 problem(s); nothing was started:")
    assert "source 'missing'" in msg and "'./nowhere/x.jsonl' was not found locally" in msg
    assert "source 'broken'" in msg and "no rows to detect the format from" in msg
    assert (
        f"source 'hh', {files['hh']}:1, key reward.sources.exact_match: reward function 'math_exact_match' "
        "reads field(s) ['answer']" in msg
    )
    assert "fix: " in msg and "Traceback" not in msg
    # tiny_math (the default prompts) passes: its answer field is there.
    assert "source 'tiny_math'" not in msg


def test_prompt_key_holding_the_whole_conversation_is_refused(files):
    # What following the old hint (input_key=chosen) did: prompt = chosen = the whole conversation.
    cfg = typed("algo=dpo", f"data.sources.tiny_pref.path={files['hh']}", "data.sources.tiny_pref.input_key=chosen")
    with pytest.raises(DataCheckError) as info:
        check_run_data(cfg)
    msg = str(info.value)
    assert "40 of the first 40 rows are bad" in msg and "40 x prompt contains its own chosen response" in msg
    assert "data.format=hh_rlhf" in msg


def test_skipped_rows_are_counted_by_reason(files, tmp_path):
    rows = [json.loads(line) for line in files["hh"].read_text().splitlines()]
    rows[3] = {"chosen": rows[3]["chosen"], "rejected": rows[3]["chosen"]}
    rows[5] = '{"chosen": '
    path = _write(tmp_path / "some_bad.jsonl", rows)
    report = check_run_data(typed("algo=dpo", f"data.train={path}"))
    assert "skipped: 1 x chosen identical to rejected (first at " in report.text()
    assert "1 x invalid JSON (first at " in report.text() and "some_bad.jsonl:6" in report.text()
    assert "some_bad.jsonl:4" in report.text()


def test_format_named_for_the_wrong_algorithm(files):
    with pytest.raises(DataCheckError) as info:
        check_run_data(typed("algo=sft", f"data.train={files['hh']}", "data.format=gsm8k"))
    assert "missing key 'question'" in str(info.value)
    with pytest.raises(DataCheckError) as info:
        check_run_data(typed("algo=kto", f"data.train={files['hh']}"))
    assert "format hh_rlhf" in str(info.value) and "algo=dpo" in str(info.value)


def test_rewrite_groups_entry_fields_into_one_dict_override():
    argv = [
        "algo=grpo",
        "+data.sources.mine.path=./m.jsonl",
        "+data.sources.mine.weight=0.3",
        "seed=1",
        "+reward.sources.len.path=r.py:length",
        "+reward.sources.len.kwargs.scale=2",
        "-v",
    ]
    assert rewrite_argv(argv) == [
        "algo=grpo",
        "+data.sources={mine: {added: true, path: './m.jsonl', weight: 0.3}}",
        "seed=1",
        "+reward.sources={len: {path: 'r.py:length', kwargs: {scale: 2}}}",
    ]
    # A multirun sweep over a field lists one dict per value.
    assert rewrite_argv(["-m", "+data.sources.m.path=a.jsonl", "+data.sources.m.weight=0.3,0.5"]) == [
        "-m",
        "+data.sources={m: {added: true, path: 'a.jsonl', weight: 0.3}},"
        "{m: {added: true, path: 'a.jsonl', weight: 0.5}}",
    ]


def test_sources_and_rewards_added_on_the_command_line(files, tmp_path):
    reward = tmp_path / "my_reward.py"
    reward.write_text("def short(prompts, responses):\n    return [1.0 / (1 + len(r)) for r in responses]\n")
    cfg = typed(
        "algo=grpo",
        f"+data.sources.gsm.path={files['gsm']}",
        "+data.sources.gsm.weight=0.3",
        f"+reward.sources.short.path={reward}:short",
        "+reward.sources.short.weight=0.5",
    )
    assert set(cfg.data.sources) == {"tiny_math", "gsm"} and cfg.data.sources["gsm"].weight == 0.3
    assert cfg.reward.sources["short"].path == f"{reward}:short" and cfg.reward.sources["short"].weight == 0.5
    report = check_run_data(cfg)
    assert [s.format for s in report.sources] == ["custom", "gsm8k"]
    # data.train replaces the preset's sources, not those added on the command line.
    both = typed("algo=dpo", f"data.train={files['hh']}", f"+data.sources.uf.path={files['uf']}")
    assert {n: s.format for n, s in resolve_data(both.data).sources.items()} == {"train": None, "uf": None}
    assert [s.format for s in check_run_data(both).sources] == ["hh_rlhf", "ultrafeedback"]


def test_cli_plan_mode_prints_the_data_report_and_multirun_adds_sources(files, tmp_path):
    """The real command line: a bad data set is refused without a traceback and without a Ray session; a
    multirun of two points sweeps a source's weight, each point reporting both sources."""
    env_cmd = [sys.executable, "-m", "rlhf.run"]
    ray_dir = tmp_path / "ray"
    env = {
        "RAY_TMPDIR": str(ray_dir),
        "PATH": "/usr/bin:/bin",
        "HOME": str(Path.home()),
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db",
    }
    bad = subprocess.run(
        [*env_cmd, "algo=dpo", f"data.train={files['gsm']}", "tracking=none"],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("error: the data check found 1 problem(s)") and "Traceback" not in bad.stderr
    assert "format gsm8k" in bad.stderr and "algo=grpo" in bad.stderr
    assert not ray_dir.exists(), "a Ray session was started for a bad data set"
    multi = subprocess.run(
        [
            *env_cmd,
            "-m",
            "mode=plan",
            "algo=grpo",
            "tracking=none",
            f"+data.sources.gsm.path={files['gsm']}",
            "+data.sources.gsm.weight=0.3,0.6",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert multi.stdout.count("data: gsm8k format detected in") == 2, multi.stdout
    assert "data.sources.gsm.weight=0.3" not in multi.stderr


_TASK_ALGO = {"pair": "dpo", "sft": "sft", "prompt": "grpo", "unpaired": "kto", "pretrain": "pretrain"}


def _presets_with_formats():
    """preset -> {source: format} for every conf/data preset whose sources name a public format."""
    import yaml

    out = {}
    for f in sorted((ROOT / "conf" / "data").glob("*.yaml")):
        sources = yaml.safe_load(f.read_text()).get("sources") or {}
        if sources and all(src.get("format") for src in sources.values()):
            out[f.stem] = {name: src["format"] for name, src in sources.items()}
    return out


@pytest.mark.parametrize("preset", sorted(_presets_with_formats()))
def test_every_preset_of_a_public_format_runs_on_a_local_copy(preset, tmp_path):
    from rlhf.data.formats import FORMATS

    sources = _presets_with_formats()[preset]
    overrides = []
    for name, fmt in sources.items():
        overrides.append(f"data.sources.{name}.path={_write(tmp_path / f'{name}.jsonl', [FORMATS[fmt].example] * 20)}")
    algo = _TASK_ALGO[FORMATS[next(iter(sources.values()))].tasks[0]]
    report = check_run_data(typed(f"algo={algo}", f"data={preset}", *overrides))
    assert {s.name: (s.format, s.good) for s in report.sources} == {n: (f, 20) for n, f in sources.items()}


def test_bad_data_is_refused_before_ray_starts(files, tmp_path):
    """`execute` (the driver) refuses each bad data set in its check: Ray is never started."""
    import ray

    from rlhf.run import execute

    wrong = _write(tmp_path / "wrong.jsonl", [{"foo": 1}] * 4)
    bad_commands = [
        ["algo=dpo", f"data.train={files['gsm']}"],  # GSM8K prompts cannot train DPO
        ["algo=sft", f"data.train={wrong}"],  # no format matches
        ["algo=dpo", f"data.sources.tiny_pref.path={files['hh']}", "data.sources.tiny_pref.input_key=chosen"],
        ["algo=grpo", f"data.train={files['hh']}"],  # the math reward's `answer` field is missing
    ]
    for command in bad_commands:
        dcfg = compose_config(rewrite_argv(["tracking=none", f"output_dir={tmp_path / 'out'}", *command]))
        with pytest.raises(DataCheckError):
            execute(dcfg, progress=False)
        assert not ray.is_initialized(), command
    assert not (tmp_path / "out").exists()


def test_inspect_shows_the_format_and_tokenized_rows_with_trained_tokens_marked(files, capsys):
    from rlhf.data.inspect import main

    assert main(["algo=dpo", f"data.train={files['hh']}", "rows=1"]) == 0
    out = capsys.readouterr().out
    assert f"data: hh_rlhf format detected in {files['hh']}" in out and "prompt tokens median" in out
    # The first row: the history is context, only the last Assistant turn sits between [[ and ]].
    assert "Go on.<|im_end|>\\n<|im_start|>assistant\\n[[It is 1.<|im_end|>]]" in out
    assert "[[It is 7, I think.<|im_end|>]]" in out and "Let me see.<|im_end|>" in out
    assert "[[Let me see." not in out
    assert main(["algo=kto", f"data.train={files['hh']}"]) == 2
    assert "format hh_rlhf" in capsys.readouterr().err


def test_a_model_folder_with_only_config_json_plans_but_does_not_run(files, tmp_path):
    from transformers import Qwen2Config

    folder = tmp_path / "qwen_config_only"
    Qwen2Config(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4).save_pretrained(
        folder
    )
    args = ("algo=dpo", f"data.train={files['hh']}", f"model.name_or_path={folder}")
    # A plan needs only the architecture: the tokenizer is a note (lengths not measured), not a problem.
    report = check_run_data(typed(*args, "mode=plan"))
    assert any("the folder holds no tokenizer" in n for n in report.notes)
    # A run needs the tokenizer and the weights: both are named, with what to copy, before anything starts.
    with pytest.raises(DataCheckError) as info:
        check_run_data(typed(*args))
    msg = str(info.value)
    assert f"model.name_or_path={folder}: the folder holds no tokenizer" in msg and "model.tokenizer=" in msg
    assert f"model.name_or_path={folder}: the folder holds no weights" in msg
    assert "chat_template" not in msg


def test_reference_solutions_longer_than_the_rollout_are_warned_about(files):
    def warnings(*extra):
        return [
            w
            for w in check_run_data(typed("algo=grpo", f"data.train={files['gsm']}", *extra)).warnings
            if "solutions" in w
        ]

    assert warnings() == []  # "7 + 3 = 10\n#### 10": a few tokens, within the default 16
    (w,) = warnings("rollout.max_new_tokens=3")
    assert "reference solutions are" in w and "rollout.max_new_tokens=3" in w and "raise rollout.max_new_tokens" in w
