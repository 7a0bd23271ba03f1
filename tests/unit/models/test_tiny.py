"""Tiny offline models: tokenizer and chat template, each arch end to end, caching and concurrent builds."""

from __future__ import annotations

import math
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf.models.tiny import (
    EOS_TOKEN,
    PAD_TOKEN,
    TINY_SPECS,
    TinySpec,
    build_tiny_model,
    build_tokenizer,
    read_build_record,
    tiny_model_dir,
)

ARCHS = sorted(TINY_SPECS)
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 12 + 7?"},
    {"role": "assistant", "content": "12 + 7 = 19."},
    {"role": "user", "content": "And 3 * 4?"},
    {"role": "assistant", "content": "3 * 4 = 12."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny_cache")


@pytest.fixture(scope="module")
def model_dirs() -> dict[str, Path]:
    # The shared cache every run uses (builds are keyed by their spec digest, published atomically, never
    # changed afterwards): a fresh build per test run cost ~45 s of warm-up. Building itself is tested below.
    return {arch: tiny_model_dir(arch) for arch in ARCHS}


# --------------------------------------------------------------------------------------------------------------
# Tokenizer


@pytest.mark.parametrize(
    "text",
    [
        "What is 12 + 7?",
        "Sure! 12 + 7 = 19.\n\nThe answer is 57.",
        "  leading and trailing  ",
        "naïve café 中文 🙂",
    ],
)
def test_tokenizer_round_trips_text(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_tokenizer_special_tokens_and_digits(tokenizer) -> None:
    assert tokenizer.convert_tokens_to_ids([PAD_TOKEN, "<|im_start|>", EOS_TOKEN]) == [0, 1, 2]
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == (PAD_TOKEN, PAD_TOKEN, EOS_TOKEN)
    assert tokenizer("hi")["input_ids"][0] != tokenizer.bos_token_id  # no bos prepended (ChatML needs none)
    assert tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"] == [2]  # one token, not split
    assert len(tokenizer.tokenize("12345")) == 5  # digits one by one
    assert 1000 < len(tokenizer) <= 2048  # the corpus runs out of frequent pairs before the 2048 bound


def test_chat_template_renders_chatml(tokenizer) -> None:
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n"
        "<|im_start|>assistant\n12 + 7 = 19.<|im_end|>\n"
        "<|im_start|>user\nAnd 3 * 4?<|im_end|>\n"
        "<|im_start|>assistant\n3 * 4 = 12.<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == expected


def test_chat_template_generation_prompt(tokenizer) -> None:
    prompt = CONVERSATION[:2]
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.apply_chat_template(prompt, tokenize=False) + "<|im_start|>assistant\n" == text
    ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert list(ids) == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_chat_template_rejects_unknown_role(tokenizer) -> None:
    with pytest.raises(Exception, match="chat roles are system, user and assistant; got tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "4"}], tokenize=False)


def test_padding_side_is_configurable() -> None:
    left = build_tokenizer(padding_side="left")
    batch = left(["hi", "What is 12 + 7?"], padding=True)
    assert batch["input_ids"][0][0] == left.pad_token_id and batch["attention_mask"][0][0] == 0
    with pytest.raises(ValueError, match="padding_side must be 'right' or 'left'"):
        build_tokenizer(padding_side="middle")


def test_missing_corpus_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        build_tokenizer(tmp_path / "nothing.txt")


# --------------------------------------------------------------------------------------------------------------
# Each arch: build, load, train, generate, reward head


@pytest.mark.parametrize("arch", ARCHS)
def test_arch_loads_and_trains(model_dirs: dict[str, Path], arch: str) -> None:
    path = model_dirs[arch]
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in path.iterdir()
    }
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == TINY_SPECS[arch].model_type
    assert model.config.max_position_embeddings == 1024 and not model.config.tie_word_embeddings
    assert model.config.vocab_size == len(tok)
    assert 2_000_000 <= sum(p.numel() for p in model.parameters()) <= 4_000_000

    batch = tok(["What is 12 + 7?", "Sure! 12 + 7 = 19."], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(**batch, labels=labels)
    if TINY_SPECS[arch].warm_steps:
        # The chat warm-up already taught it the shipped answer style: well below a uniform guess.
        assert out.loss.item() < math.log(len(tok)) - 1.0
    else:
        # Init std 0.02 makes logits near zero, so the first loss is close to a uniform guess: ln(vocab).
        assert abs(out.loss.item() - math.log(len(tok))) < 0.3
    out.loss.backward()
    for name in ("lm_head.weight", "model.embed_tokens.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", ARCHS)
def test_loaded_tokenizer_matches_built_one(model_dirs: dict[str, Path], tokenizer, arch: str) -> None:
    loaded = AutoTokenizer.from_pretrained(model_dirs[arch])
    text = "Cafe\u0301 What's 12 + 7?\n\n  Sure!<|im_end|>"  # decomposed accent: both sides apply NFC
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.apply_chat_template(CONVERSATION, tokenize=False) == tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False
    )
    assert (loaded.eos_token, loaded.pad_token) == (EOS_TOKEN, PAD_TOKEN)
    assert AutoTokenizer.from_pretrained(model_dirs[arch], padding_side="left").padding_side == "left"


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_stops_at_eos(model_dirs: dict[str, Path], arch: str) -> None:
    path = model_dirs[arch]
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (2, 0)
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("What is 1 + 2?", "Hello!")
    ]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    # Force eos: a large bias on it after 3 free tokens. eos is not passed: it comes from generation_config.json.
    out = model.generate(
        **batch, do_sample=False, max_new_tokens=20, min_new_tokens=3, sequence_bias={(tok.eos_token_id,): 100.0}
    )
    new = out[:, batch["input_ids"].shape[1] :]
    assert new.shape[1] == 4  # 3 tokens + eos, then stopped well before 20
    assert (new[:, -1] == tok.eos_token_id).all() and (new[:, :3] != tok.eos_token_id).all()


def test_reward_model_loads_from_causal_dir(model_dirs: dict[str, Path]) -> None:
    for arch in ARCHS:
        path = model_dirs[arch]
        reward = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
        tok = AutoTokenizer.from_pretrained(path)  # right padding: trailing pads cannot change earlier tokens
        texts = ["What is 12 + 7? Sure! 12 + 7 = 19.", "hi"]
        with torch.no_grad():
            batched = reward(**tok(texts, return_tensors="pt", padding=True)).logits
            alone = torch.cat([reward(**tok([t], return_tensors="pt")).logits for t in texts])
        assert batched.shape == (2, 1)
        # The head pools the last non-pad token (found through pad_token_id), so padding leaves scores unchanged.
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5, msg=arch)


def test_mixtral_router_aux_loss(model_dirs: dict[str, Path]) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dirs["mixtral"])
    tok = AutoTokenizer.from_pretrained(model_dirs["mixtral"])
    batch = tok(["What is 12 + 7?"], return_tensors="pt")
    plain = model(**batch, labels=batch["input_ids"])
    routed = model(**batch, labels=batch["input_ids"], output_router_logits=True)
    assert plain.aux_loss is None and routed.aux_loss > 0
    assert len(routed.router_logits) == model.config.num_hidden_layers
    # loss = language-model loss + router_aux_loss_coef * aux_loss (Switch Transformers' balancing term)
    torch.testing.assert_close(routed.loss, plain.loss + model.config.router_aux_loss_coef * routed.aux_loss)
    assert model.config.router_aux_loss_coef == 0.02


# --------------------------------------------------------------------------------------------------------------
# Caching, determinism, concurrency


@pytest.fixture(scope="module")
def llama_in_cache(cache: Path) -> Path:
    """tiny:llama built into this module's own cache (no warm-up: a second or two)."""
    return tiny_model_dir("llama", cache_dir=cache)


def test_second_call_hits_the_cache(cache: Path, llama_in_cache: Path) -> None:
    path = llama_in_cache
    record = read_build_record(path)
    weights_mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir("llama", cache_dir=cache) == path
    assert read_build_record(path)["build_id"] == record["build_id"]
    assert (path / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert path.parent == cache / "tiny" and path.name.startswith("llama-")


def test_env_var_sets_the_cache(monkeypatch: pytest.MonkeyPatch, cache: Path, llama_in_cache: Path) -> None:
    monkeypatch.setenv("RLHF_CACHE", str(cache))
    assert tiny_model_dir("llama") == llama_in_cache


def test_spec_change_builds_a_new_dir(cache: Path, llama_in_cache: Path) -> None:
    base = TINY_SPECS["llama"]
    shallow = tiny_model_dir(base.with_config(num_hidden_layers=1), cache_dir=cache)
    reseeded = tiny_model_dir(TinySpec(base.model_type, base.config, seed=1), cache_dir=cache)
    assert len({shallow, reseeded, llama_in_cache}) == 3
    assert AutoModelForCausalLM.from_pretrained(shallow).config.num_hidden_layers == 1
    one, two = load_file(llama_in_cache / "model.safetensors"), load_file(reseeded / "model.safetensors")
    assert not torch.equal(one["lm_head.weight"], two["lm_head.weight"])


def test_build_is_deterministic_and_leaves_global_rng(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(TINY_SPECS["qwen2"], tmp_path)
    torch.testing.assert_close(torch.rand(3), expected_draw)  # the build forked the RNG
    rebuilt, cached = load_file(tmp_path / "model.safetensors"), load_file(model_dirs["qwen2"] / "model.safetensors")
    assert rebuilt.keys() == cached.keys()
    assert all(torch.equal(rebuilt[k], cached[k]) for k in cached)
    assert (tmp_path / "tokenizer.json").read_text() == (model_dirs["qwen2"] / "tokenizer.json").read_text()


def test_bad_specs_are_named(cache: Path) -> None:
    with pytest.raises(KeyError, match=r"unknown tiny arch 'gpt5'.*'llama', 'llama_chat', 'mixtral', 'qwen2'"):
        tiny_model_dir("gpt5", cache_dir=cache)
    with pytest.raises(ValueError, match=r"sets \['eos_token_id', 'vocab_size'\]"):
        TINY_SPECS["llama"].with_config(vocab_size=99, eos_token_id=5)
    with pytest.raises(ValueError, match="no_such_model"):  # fails inside the build, under the lock
        tiny_model_dir(TinySpec("no_such_model", {}), cache_dir=cache)
    leftovers = [p.name for p in (cache / "tiny").iterdir() if "no_such_model" in p.name]
    assert [name for name in leftovers if not name.endswith(".lock")] == []  # no target, staging removed
    with pytest.raises(TypeError):
        TINY_SPECS["llama"].config["hidden_size"] = 1  # shared specs are read-only


def _build_and_load(cache: str, barrier, results) -> None:
    """Child process: wait for the sibling, build (or wait for) the same spec, then load it."""
    spec = TINY_SPECS["llama"].with_config(num_hidden_layers=1, intermediate_size=256)
    barrier.wait(timeout=60)
    try:
        path = tiny_model_dir(spec, cache_dir=cache)
        AutoModelForCausalLM.from_pretrained(path)
        AutoTokenizer.from_pretrained(path)
        results.put((str(path), read_build_record(path)["build_id"]))
    except Exception as err:  # reported to the parent, which fails the test with it
        results.put(("error", repr(err)))


def test_concurrent_builds_give_one_dir(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter, like a Ray worker
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_build_and_load, args=(str(tmp_path), barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    assert all(outcome[0] != "error" for outcome in outcomes), outcomes
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    assert outcomes[0] == outcomes[1]  # same folder, same build: one process built, the other waited
    entries = sorted(p.name for p in (tmp_path / "tiny").iterdir() if not p.name.endswith(".lock"))
    assert entries == [Path(outcomes[0][0]).name]  # no second folder, no staging leftovers


def test_module_imports_without_torch() -> None:
    code = (
        "import sys, rlhf.models.tiny, rlhf.data.synthetic; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
