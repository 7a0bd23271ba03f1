"""Ring attention on CPU (gloo, several processes, tiny Llama in fp32): a row split over a ring gives the
log-probs, scores and parameter gradients of the unsplit row.

Each process builds the same model (same seed), runs the unsplit forward/backward alone as the reference, then
the ring-split one; the ring's gradients are summed over the ring (what DeepSpeed's all-reduce does over the
processes) and compared with the reference. The packed row holds samples of different lengths, one of them
crossing a chunk boundary, and a length that is no multiple of the ring (so the row is padded)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Sample lengths of the packed row: 23 tokens; ring 2 cuts at 12 (inside the 9-token sample), ring 4 at 6, 12, 18.
SEQ_LENS = [5, 9, 2, 7]
ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(path: str, classifier: bool = False):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    if classifier:
        m = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32, attn_implementation="sdpa"
        )
        m.config.pad_token_id = 0
    else:
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    return m


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _ring_grads(model, group) -> dict:
    out = _grads(model)
    for g in out.values():
        dist.all_reduce(g, group=group)
    return out


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _packed_batch():
    from rlhf.data.packing import collate_packed, packed_attention_kwargs

    g = torch.Generator().manual_seed(1)
    samples = []
    for n in SEQ_LENS:
        ids = torch.randint(3, 200, (n,), generator=g).tolist()
        samples.append({"input_ids": ids, "loss_mask": [1] * n})
    batch = collate_packed(samples, max_len=sum(SEQ_LENS))
    kw = packed_attention_kwargs(batch["seq_lens"], batch["input_ids"].shape[1], "sdpa", dtype=torch.float32)
    batch["attention_mask_4d"] = kw["attention_mask"]
    batch["seq_lens"] = torch.tensor(batch["seq_lens"])
    return batch


def _check_sft(path: str, ring, checkpointing: bool = False) -> dict:
    from rlhf.models.ring_attention import clear_ring, install
    from rlhf.training import objectives

    batch = _packed_batch()
    weights = torch.linspace(0.5, 1.5, batch["input_ids"].shape[1] - 1)[None]

    model = _model(path)
    saved = objectives.get_ring
    objectives.get_ring = lambda: None  # the unsplit reference in the same process
    try:
        ref_lp, mask, _ = objectives._forward_logps(model, batch)
    finally:
        objectives.get_ring = saved
    (-(ref_lp * mask * weights).sum()).backward()
    ref_grads = _grads(model)

    model = _model(path)
    install(model)
    if checkpointing:  # layers recomputed in backward, after the ring forward has returned
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    lp, mask2, _ = objectives._forward_logps(model, batch)
    (-(lp * mask2 * weights).sum()).backward()
    grads = _ring_grads(model, ring.group)
    clear_ring()
    return {
        "shape": tuple(lp.shape) == tuple(ref_lp.shape),
        "logp": float((lp - ref_lp).detach().abs().max()),
        "grad": _max_diff(grads, ref_grads),
    }


def _sft_checkpointing(path: str, ring) -> dict:
    return _check_sft(path, ring, checkpointing=True)


def _check_rl(path: str, ring) -> dict:
    """The policy's packed pass (rlhf/training/packing_rl.py): log-probs, entropy and gradient."""
    from rlhf.models.ring_attention import install
    from rlhf.training import packing_rl

    g = torch.Generator().manual_seed(2)
    # Rows [left-padded prompt 4 | right-padded response 6]; real lengths 3+6, 4+2, 1+5, 2+3 = 26 tokens.
    plen, rlen = [3, 4, 1, 2], [6, 2, 5, 3]
    seq = torch.zeros(4, 10, dtype=torch.long)
    am = torch.zeros(4, 10, dtype=torch.long)
    for i, (p, r) in enumerate(zip(plen, rlen)):
        seq[i, 4 - p : 4 + r] = torch.randint(3, 200, (p + r,), generator=g)
        am[i, 4 - p : 4 + r] = 1
    packed = packing_rl.pack_rows(seq, am, 4)
    adv = torch.randn(4, 6, generator=g)

    def run(model):
        lp, ent, _ = packing_rl.packed_response_logps(model, packed, 0.7, with_entropy=True, entropy_grad=True)
        ((lp * adv).sum() + 0.1 * ent.sum()).backward()
        return lp, ent

    from rlhf.models import ring_attention

    model = _model(path)
    saved = ring_attention._RING
    ring_attention._RING = None
    try:
        ref_lp, ref_ent = run(model)
    finally:
        ring_attention._RING = saved
    ref_grads = _grads(model)
    model = _model(path)
    install(model)
    lp, ent = run(model)
    grads = _ring_grads(model, ring.group)
    return {
        "logp": float((lp - ref_lp).detach().abs().max()),
        "entropy": float((ent - ref_ent).detach().abs().max()),
        "grad": _max_diff(grads, ref_grads),
    }


def _check_rm(path: str, ring) -> dict:
    """A reward model's scores of right-padded rows of different lengths, and the gradient of a pairwise loss."""
    from rlhf.models.ring_attention import install, sequence_scores

    g = torch.Generator().manual_seed(3)
    lens = [11, 6, 9, 3]
    ids = torch.zeros(4, 11, dtype=torch.long)
    am = torch.zeros(4, 11, dtype=torch.long)
    for i, n in enumerate(lens):
        ids[i, :n] = torch.randint(3, 200, (n,), generator=g)
        am[i, :n] = 1
    model = _model(path, classifier=True)
    ref = model(input_ids=ids, attention_mask=am, use_cache=False).logits.squeeze(-1)
    torch.nn.functional.logsigmoid(ref[:2] - ref[2:]).sum().backward()
    ref_grads = _grads(model)
    model = _model(path, classifier=True)
    install(model)
    scores = sequence_scores(model, ring, ids, am)
    torch.nn.functional.logsigmoid(scores[:2] - scores[2:]).sum().backward()
    grads = _ring_grads(model, ring.group)
    return {"score": float((scores - ref).detach().abs().max()), "grad": _max_diff(grads, ref_grads)}


def _worker(rank: int, world: int, rings: list, port: int, path: str, out) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    try:
        from rlhf.models.ring_attention import clear_ring, setup_ring

        results = {}
        for size, stride in rings:
            checks = (
                ("sft", _check_sft),
                ("sft+checkpointing", _sft_checkpointing),
                ("rl", _check_rl),
                ("rm", _check_rm),
            )
            for name, check in checks:
                results[(size, stride, name)] = check(path, setup_ring(size, stride))
                clear_ring()
        out.put((rank, results))
    finally:
        dist.destroy_process_group()


def _run(world: int, rings: list) -> dict:
    """{(ring size, head stride, check): {quantity: largest difference over the ranks}}."""
    from rlhf.models.loading import resolve_path

    path = resolve_path("tiny:llama")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, rings, port, path, out)) for r in range(world)]
    for p in procs:
        p.start()
    per_rank = dict(out.get(timeout=400) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    worst: dict = {}
    for res in per_rank.values():
        for key, values in res.items():
            assert values.pop("shape", True), key
            for k, v in values.items():
                worst.setdefault(key, {})[k] = max(worst.get(key, {}).get(k, 0.0), v)
    return worst


@pytest.mark.slow  # several processes with gloo: left out of make test-fast
@pytest.mark.parametrize(
    "world,rings",
    [(2, [(2, 1)]), (4, [(4, 2), (2, 1)])],
    ids=["2 processes: ring 2", "4 processes: ring 4 (head stride 2), two rings of 2"],
)
def test_ring_split_equals_the_unsplit_row(world, rings):
    worst = _run(world, rings)
    for key, values in worst.items():
        print(f"{world} processes, ring {key[0]}, head stride {key[1]}, {key[2]}: max |diff| {values}")
        for k, v in values.items():
            assert v <= ATOL, f"{key} {k}: {v}"
