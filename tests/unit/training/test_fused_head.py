"""The fused LM head (engine.fused_lm_head): log-probs, entropy and every parameter's gradient equal the logits
path's, on whole models (padded and packed micro-batches, tied and untied heads), and the head is left alone
wherever the fusion does not apply."""

from __future__ import annotations

import pytest
import torch

from rlhf.algos.logprobs import head_logps_and_entropy
from rlhf.algos.policy_loss import ppo_policy_loss
from rlhf.training.packing_rl import micro_batches, packed_response_logps
from rlhf.training.sequences import (
    LOGITS,
    HeadMode,
    head_bypassed,
    plain_head,
    response_logps,
    token_logps_and_entropy,
)
from tests.unit.training.test_packing_rl import VOCAB, _max_diff, _model, _rollout

FUSED = HeadMode(fused=True)


def _lm(tie: bool = False):
    return _model("qwen2", "sdpa", tie=tie).double()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_head_logps_equal_the_logits_path_values_and_gradients(compiled, temperature):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(40, 8, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 40, (3, 5), generator=g)
    up = [torch.randn(3, 5, dtype=torch.float64, generator=g) for _ in range(2)]
    results = []
    for fused in (True, False):
        if fused:
            lp, ent = head_logps_and_entropy(
                h, w, y, temperature, with_entropy=True, entropy_grad=True, chunk_rows=4, compiled=compiled
            )
        else:
            lp, ent = token_logps_and_entropy(h @ w.t(), y, temperature, with_entropy=True, entropy_grad=True)
        (lp * up[0] + ent * up[1]).sum().backward()
        results.append((lp.detach(), ent.detach(), h.grad.clone(), w.grad.clone()))
        h.grad = w.grad = None
    for a, b in zip(*results):
        assert _max_diff(a, b) < 1e-12
    # Without entropy: none returned, and the log-probs alone carry the same gradient.
    lp, ent = head_logps_and_entropy(h, w, y, temperature, chunk_rows=7, compiled=compiled)
    assert ent is None and _max_diff(lp.detach(), results[0][0]) < 1e-12


def test_head_logps_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        head_logps_and_entropy(torch.zeros(2, 8), torch.zeros(5, 7), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        head_logps_and_entropy(torch.zeros(2, 8), torch.zeros(5, 8), torch.zeros(2, dtype=torch.long), 0.0)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_fused_head_on_a_model_equals_the_logits_path(tie, packed):
    """A PPO loss with an entropy term through whole micro-batches: the same loss, log-probs, entropy and
    gradient on every parameter (the tied head's gradient adds to the embedding's)."""
    exp = _rollout()
    mask = exp.action_mask.double()
    micros = micro_batches(exp, micro_rows=3, max_tokens=40 if packed else None, packed=packed)
    runs = []
    for head in (FUSED, LOGITS):
        model = _lm(tie=tie)
        assert (plain_head(model) is not None) and (model.lm_head.weight is model.model.embed_tokens.weight) == tie
        calls: list = []
        model.lm_head.register_forward_hook(lambda mod, inp, out, calls=calls: calls.append(out.shape))
        logps, ents = [], []
        for m in micros:
            if packed:
                lp, ent, _ = packed_response_logps(model, m.packed, 0.7, True, True, head=head)
            else:
                b = m.batch
                lp, ent, _ = response_logps(
                    model, b.sequences, b.attention_mask, b.prompt_len, 0.7, True, entropy_grad=True, head=head
                )
            e = m.batch
            part, _ = ppo_policy_loss(
                lp,
                e.old_logps.double(),
                e.advantages.double(),
                e.action_mask.double(),
                clip_low=0.2,
                clip_high=0.2,
                agg="token_mean",
            )
            (part - 0.01 * (ent * e.action_mask).sum()).backward()
            logps.append(lp.detach())
            ents.append(ent.detach())
        assert type(model.lm_head) is torch.nn.Linear  # put back after every forward
        assert (calls == []) == (head is FUSED)  # the fused path never ran the head module (no logits)
        runs.append((logps, ents, _grads(model)))
    (lp_f, ent_f, g_f), (lp_l, ent_l, g_l) = runs
    for a, b in zip(lp_f + ent_f, lp_l + ent_l):
        assert _max_diff(a, b) < 1e-10
    assert g_f.keys() == g_l.keys() and ("lm_head.weight" in g_f or tie)
    for name in g_l:
        assert _max_diff(g_f[name], g_l[name]) < 1e-10 * max(1.0, g_l[name].abs().max().item()), name
    assert mask.sum() > 0


def test_the_head_is_left_alone_where_fusion_does_not_apply():
    from peft import LoraConfig, get_peft_model

    model = _lm()
    linear = model.lm_head
    with head_bypassed(model, LOGITS) as w:  # fusion off
        assert w is None and model.lm_head is linear
    with head_bypassed(model, FUSED) as w:
        assert w is linear.weight and type(model.lm_head) is torch.nn.Identity
    assert model.lm_head is linear
    # LoRA on the attention keeps a plain head (found through the PEFT wrapper); LoRA on the head does not.
    attn = get_peft_model(_lm(), LoraConfig(r=2, target_modules=["q_proj"]))
    assert plain_head(attn) is not None
    on_head = get_peft_model(_lm(), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    assert plain_head(on_head) is None
    # A model type whose forward changes the logits after the head (Gemma 2 soft-caps them).
    from transformers import AutoModelForCausalLM, Gemma2Config

    gemma = AutoModelForCausalLM.from_config(
        Gemma2Config(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            vocab_size=VOCAB,
        )
    )
    assert plain_head(gemma) is None


def test_head_mode_compiles_only_on_gpus():
    from rlhf.config.engine import EngineConfig

    assert HeadMode.of(EngineConfig(), "cuda") == HeadMode(fused=True, compiled=True)
    assert HeadMode.of(EngineConfig(), "cpu") == HeadMode(fused=True, compiled=False)
    assert HeadMode.of(EngineConfig(fused_lm_head=False), "cuda") == LOGITS


def test_offline_objectives_give_the_same_loss_and_gradients_with_the_fused_head():
    """SFT's loss and DPO's sequence log-probs (rlhf/training/objectives.py): with the fused head only the loss
    mask's positions reach the head, and the loss, the sequence sums and every gradient equal the logits path's."""
    from rlhf.training.objectives import StepCounts, _sequence_logps, sft_objective

    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, VOCAB, (3, 11), generator=g)
    attn = torch.ones_like(ids)
    attn[2, 8:] = 0  # right padding
    loss_mask = torch.zeros_like(ids)
    loss_mask[0, 4:] = 1
    loss_mask[1, 6:] = 1
    loss_mask[2, 3:8] = 1
    batch = {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask}
    counts = StepCounts(tokens=float(loss_mask[:, 1:].sum()), samples=3.0)
    runs = []
    for head in (FUSED, LOGITS):
        model = _lm(tie=True)
        model.head_mode = head
        calls: list = []
        model.lm_head.register_forward_hook(lambda mod, inp, out, calls=calls: calls.append(out.shape))
        loss, _ = sft_objective(model, batch, counts)
        total, mean, n = _sequence_logps(model, batch)
        (loss + 0.1 * total.sum() + mean.sum()).backward()
        assert (calls == []) == (head is FUSED)
        runs.append((loss.detach(), total.detach(), mean.detach(), n, _grads(model)))
    (lf, tf, mf, nf, gf), (ll, tl, ml, nl, gl) = runs
    assert torch.equal(nf, nl) and _max_diff(lf, ll) < 1e-12
    assert _max_diff(tf, tl) < 1e-10 and _max_diff(mf, ml) < 1e-12
    for name in gl:
        assert _max_diff(gf[name], gl[name]) < 1e-10 * max(1.0, gl[name].abs().max().item()), name


def test_a_failing_compile_falls_back_to_the_eager_math_with_one_warning(caplog):
    from rlhf.algos import logprobs

    def broken(*args):
        raise RuntimeError("no compiler here")

    calls = []

    def eager(*args):
        calls.append(1)
        return logprobs._head_forward(*args)

    saved = dict(logprobs._COMPILED)
    logprobs._COMPILED.clear()
    try:
        fn = logprobs._or_eager(broken, eager)
        x = torch.randn(4, 9, dtype=torch.float64)
        y = torch.tensor([1, 2, 3, 4])
        with caplog.at_level("WARNING"):
            first = fn(x.clone(), y, 1.0, True)
            second = fn(x.clone(), y, 1.0, True)
        assert len(calls) == 2 and logprobs._COMPILED["failed"]
        assert sum("torch.compile of the fused LM head failed" in r.message for r in caplog.records) == 1
        want = torch.log_softmax(x, -1).gather(-1, y[:, None]).squeeze(-1)
        assert _max_diff(first[0], want) < 1e-12 and _max_diff(second[0], want) < 1e-12
    finally:
        logprobs._COMPILED.clear()
        logprobs._COMPILED.update(saved)
