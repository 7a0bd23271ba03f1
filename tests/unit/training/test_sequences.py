"""The P-1 offset of response log-probs and values, position ids of left-padded rows, and action masks."""

from __future__ import annotations

import pytest
import torch

from rlhf.algos.logprobs import token_logprobs
from rlhf.training.sequences import action_mask_from, position_ids, response_logps, response_values

PAD, EOS = 0, 9


class _Echo(torch.nn.Module):
    """A 'model' whose logits at position t put all mass on token (input[t] + 1) % V: the log-prob of a response
    token is 0 exactly when it is the previous token + 1, which pins down which position predicts it."""

    def __init__(self, vocab: int = 10):
        super().__init__()
        self.vocab = vocab
        self.seen: dict = {}

    def forward(self, input_ids, attention_mask, position_ids, use_cache):
        self.seen = {"attention_mask": attention_mask, "position_ids": position_ids}
        nxt = (input_ids + 1) % self.vocab
        logits = torch.full((*input_ids.shape, self.vocab), -30.0)
        logits.scatter_(-1, nxt.unsqueeze(-1), 30.0)

        class Out:
            pass

        out = Out()
        out.logits = logits
        return out


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    # Left padding: the first real token is position 0; padding is clamped to 0. Right padding repeats the last.
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


def test_response_logps_read_the_logits_one_position_before_each_response_token():
    # Prompt [pad, 3, 4] (P = 3), response [5, 6, 2]: 5 follows 4 and 6 follows 5 (log-prob ~0), 2 does not.
    seq = torch.tensor([[PAD, 3, 4, 5, 6, 2]])
    am = torch.tensor([[0, 1, 1, 1, 1, 1]])
    model = _Echo()
    logps, ent, aux = response_logps(model, seq, am, prompt_len=3, with_entropy=True)
    assert logps.shape == (1, 3) and ent.shape == (1, 3) and aux is None
    # Predicted 7 after 6 where 2 came: log_softmax gives -60 (two logits 30 and -30) minus log(1 + 9e^-60) ~ -60.
    assert torch.allclose(logps[0, :2], torch.zeros(2), atol=1e-6)
    assert abs(float(logps[0, 2]) + 60.0) < 1e-3
    # Position ids reach the model, counted from the first real prompt token.
    assert model.seen["position_ids"].tolist() == [[0, 0, 1, 2, 3, 4]]
    # Same numbers as token_logprobs on the sliced logits (the definition).
    logits = model(seq, am, None, False).logits[:, 2:-1]
    assert torch.equal(logps, token_logprobs(logits, seq[:, 3:]))


def test_response_values_take_the_state_before_each_response_token():
    class Critic(torch.nn.Module):
        def forward(self, input_ids, attention_mask, position_ids, use_cache):
            class Out:
                pass

            out = Out()
            out.logits = input_ids.float().unsqueeze(-1) * 10  # value of position t = 10 * token t
            return out

    seq = torch.tensor([[1, 2, 3, 4, 5]])
    v = response_values(Critic(), seq, torch.ones_like(seq), prompt_len=2)
    # Response tokens 3, 4, 5 are predicted at positions 1, 2, 3 holding tokens 2, 3, 4.
    assert v.tolist() == [[20.0, 30.0, 40.0]]


def test_action_mask_keeps_tokens_through_the_first_eos():
    resp = torch.tensor([[5, 6, EOS, 7, EOS], [5, 6, 7, 8, 6], [EOS, PAD, PAD, PAD, PAD], [5, PAD, PAD, PAD, PAD]])
    assert action_mask_from(resp, {EOS}, PAD).tolist() == [
        [1, 1, 1, 0, 0],  # through the first EOS, nothing after it (not even a second EOS)
        [1, 1, 1, 1, 1],  # no EOS: every token counts
        [1, 0, 0, 0, 0],  # an immediate EOS is the one action
        [1, 0, 0, 0, 0],  # padding is never an action
    ]
    # With the pad id also an EOS (tokenizers that pad with EOS), the first pad ends the response and counts.
    assert action_mask_from(torch.tensor([[5, PAD, PAD]]), {PAD}, PAD).tolist() == [[1, 1, 0]]
    # ignore_eos runs pass no EOS ids: only padding is masked.
    assert action_mask_from(torch.tensor([[EOS, 5, PAD]]), set(), PAD).tolist() == [[1, 1, 0]]


# ---------------------------------------------------------------------- log-probs and entropy from one pass


def _plain(logits, labels, temperature):
    lsm = torch.log_softmax(logits / temperature, -1)
    return lsm.gather(-1, labels[..., None])[..., 0], -(lsm.exp() * lsm).sum(-1)


@pytest.mark.parametrize("chunk_rows", [1, 4, 7, None])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_fused_logps_and_entropy_equal_the_plain_computation_values_and_gradients(chunk_rows, temperature):
    from rlhf.training.sequences import token_logps_and_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 41, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 41, (3, 5), generator=g)
    w_lp, w_ent = (
        torch.randn(3, 5, generator=g, dtype=torch.float64),
        torch.randn(3, 5, generator=g, dtype=torch.float64),
    )

    a = logits.clone().requires_grad_()
    lp, ent = token_logps_and_entropy(
        a, labels, temperature, with_entropy=True, entropy_grad=True, chunk_rows=chunk_rows
    )
    ((lp * w_lp).sum() + (ent * w_ent).sum()).backward()
    b = logits.clone().requires_grad_()
    plp, pent = _plain(b, labels, temperature)
    ((plp * w_lp).sum() + (pent * w_ent).sum()).backward()
    assert torch.allclose(lp, plp, atol=1e-12) and torch.allclose(ent, pent, atol=1e-12)
    assert torch.allclose(a.grad, b.grad, atol=1e-12)

    # Entropy logged but not trained on: detached, and the log-prob gradient alone is the plain one's.
    c = logits.clone().requires_grad_()
    lp, ent = token_logps_and_entropy(c, labels, temperature, with_entropy=True, chunk_rows=chunk_rows)
    assert not ent.requires_grad
    (lp * w_lp).sum().backward()
    d = logits.clone().requires_grad_()
    (_plain(d, labels, temperature)[0] * w_lp).sum().backward()
    assert torch.allclose(c.grad, d.grad, atol=1e-12)


def test_fused_pass_without_entropy_is_token_logprobs_and_uses_no_kernel_on_cpu():
    from rlhf.training.sequences import _kernel_logps, token_logps_and_entropy

    logits = torch.randn(2, 3, 11)
    labels = torch.randint(0, 11, (2, 3))
    lp, ent = token_logps_and_entropy(logits, labels, 0.8)
    assert ent is None and torch.equal(lp, token_logprobs(logits, labels, temperature=0.8))
    assert _kernel_logps(logits, labels, 0.8) is None


def test_entropy_bonus_reaches_the_logits_when_it_is_in_the_loss():
    # Uniform logits over 2 tokens are the entropy maximum: gradient 0 there. Logits [1, 0]: p = [0.731, 0.269],
    # dH/dx_0 = -p_0 (log p_0 + H) = -0.731 (-0.3133 + 0.5822) = -0.1966, dH/dx_1 = +0.1966.
    seq = torch.tensor([[1, 0]])

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.x = torch.nn.Parameter(torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))

        def forward(self, input_ids, attention_mask, position_ids, use_cache):
            class Out:
                pass

            out = Out()
            out.logits = self.x
            return out

    m = Fixed()
    _, ent, _ = response_logps(m, seq, torch.ones_like(seq), prompt_len=1, with_entropy=True, entropy_grad=True)
    ent.sum().backward()
    assert m.x.grad[0, 0].tolist() == pytest.approx([-0.19661, 0.19661], abs=1e-4)
    assert m.x.grad[0, 1].tolist() == [0.0, 0.0]  # the last position predicts nothing
