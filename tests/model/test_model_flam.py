"""FLAM: padding never changes outputs; mask-aware attention equals a reference on the unpadded sequence."""

import math

import pytest
import torch

from ser_model.flam import AttentivePooling, FrameAttention, attentive_pool, mean_pool

torch.set_num_threads(2)

D, HEADS = 16, 4


def _padded_batch(seed: int, lengths=(7, 3, 12, 1)):
    g = torch.Generator().manual_seed(seed)
    t_max = max(lengths)
    h = torch.randn(len(lengths), t_max, D, generator=g)
    mask = torch.arange(t_max)[None, :] < torch.tensor(lengths)[:, None]
    h = torch.where(mask[:, :, None], h, torch.full_like(h, 1e4))  # loud garbage in the padding
    return h, mask


def reference_mha(x: torch.Tensor, module: FrameAttention) -> torch.Tensor:
    """LN(x + MHA(x)) on one unpadded sequence x (T, D), written out from the module's weights."""
    att = module.attention
    w_q, w_k, w_v = att.in_proj_weight.chunk(3)
    b_q, b_k, b_v = att.in_proj_bias.chunk(3)
    q, k, v = x @ w_q.T + b_q, x @ w_k.T + b_k, x @ w_v.T + b_v
    d_head = D // HEADS
    heads = []
    for hd in range(HEADS):
        sl = slice(hd * d_head, (hd + 1) * d_head)
        scores = q[:, sl] @ k[:, sl].T / math.sqrt(d_head)
        heads.append(torch.softmax(scores, dim=1) @ v[:, sl])
    a = torch.cat(heads, dim=1) @ att.out_proj.weight.T + att.out_proj.bias
    return torch.nn.functional.layer_norm(x + a, (D,), module.norm.weight, module.norm.bias, module.norm.eps)


@pytest.mark.parametrize("seed", range(3))
def test_frame_attention_equals_reference_on_unpadded_sequence(seed):
    torch.manual_seed(seed)
    module = FrameAttention(D, HEADS, dropout=0.1).eval()
    h, mask = _padded_batch(seed)
    with torch.no_grad():
        out = module(h, mask)
        for b in range(h.shape[0]):
            n = int(mask[b].sum())
            torch.testing.assert_close(out[b, :n], reference_mha(h[b, :n], module), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(
                out[b, :n], module(h[b : b + 1, :n], mask[b : b + 1, :n])[0], rtol=1e-5, atol=1e-5
            )
            assert torch.all(out[b, n:] == 0)


@pytest.mark.parametrize("seed", range(3))
def test_attentive_pool_ignores_padding_and_matches_reference(seed):
    h, mask = _padded_batch(seed)
    q = torch.randn(D, generator=torch.Generator().manual_seed(100 + seed))
    u, alpha = attentive_pool(h, mask, q)
    for b in range(h.shape[0]):
        n = int(mask[b].sum())
        x = h[b, :n]
        ref_alpha = torch.softmax(torch.stack([x[t] @ q for t in range(n)]) / math.sqrt(D), dim=0)
        ref_u = sum(ref_alpha[t] * x[t] for t in range(n))
        torch.testing.assert_close(alpha[b, :n], ref_alpha)
        torch.testing.assert_close(u[b], ref_u)
        assert torch.all(alpha[b, n:] == 0)
        u_alone, _ = attentive_pool(x[None], mask[b : b + 1, :n], q)
        torch.testing.assert_close(u[b], u_alone[0])


def test_attentive_pooling_module_uses_its_query():
    h, mask = _padded_batch(0)
    module = AttentivePooling(D)
    u, alpha = module(h, mask)
    u_ref, alpha_ref = attentive_pool(h, mask, module.query)
    assert torch.equal(u, u_ref) and torch.equal(alpha, alpha_ref)
    torch.testing.assert_close(alpha.sum(1), torch.ones(h.shape[0]))
    u.sum().backward()
    assert module.query.grad is not None and torch.isfinite(module.query.grad).all()


def test_mean_pool_ignores_padding():
    h, mask = _padded_batch(1)
    u = mean_pool(h, mask)
    for b in range(h.shape[0]):
        n = int(mask[b].sum())
        torch.testing.assert_close(u[b], sum(h[b, t] for t in range(n)) / n)


def test_utterance_without_valid_frames_is_rejected():
    h, mask = _padded_batch(0)
    mask[2] = False
    with pytest.raises(ValueError, match=r"utterance\(s\) \[2\] have no valid frame"):
        attentive_pool(h, mask, torch.zeros(D))
    with pytest.raises(ValueError, match="no valid frame"):
        FrameAttention(D, HEADS)(h, mask)


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match="dim=16 is not divisible by heads=3"):
        FrameAttention(D, 3)
