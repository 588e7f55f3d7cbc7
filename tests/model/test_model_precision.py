"""Training and evaluation precision on a CPU (issue 36): bf16 autocast where the CPU multiplies bf16
in hardware, fp32 otherwise, the weights fp32 either way; and evaluation batches padded to a few
shapes, which must not change a prediction."""

import re
import sys
from pathlib import Path

import pytest
import torch

from ser_model.config import SERConfig
from ser_model.data import PAD_SECONDS, collate_for, collate_padded, collate_to_shapes
from ser_model.losses import multi_loss
from ser_model.model import SERModel
from ser_model.runtime import autocast_dtype, cpu_has_native_bf16

torch.set_num_threads(2)

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

LABELS = ("neutral", "happy", "angry", "sad")
SR = 16000
CPU = torch.device("cpu")


def cpuinfo_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), None elsewhere: the reference for the probe."""
    path = Path("/proc/cpuinfo")
    if not sys.platform.startswith("linux") or not path.is_file():
        return None
    found = re.search(r"^flags\s*:\s*(.*)$", path.read_text(), flags=re.MULTILINE)
    return set(found.group(1).split()) if found else None


def test_native_bf16_probe_agrees_with_the_cpu_flags():
    flags = cpuinfo_flags()
    if flags is None or not {"avx2", "sse2"} & flags:
        pytest.skip("needs an x86 Linux machine's /proc/cpuinfo")
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_auto_precision_is_bf16_only_where_the_cpu_has_it_and_falls_back_to_fp32():
    assert autocast_dtype("auto", CPU, native_cpu_bf16=True) is torch.bfloat16
    assert autocast_dtype("auto", CPU, native_cpu_bf16=False) is None
    assert autocast_dtype("auto", CPU) is (torch.bfloat16 if cpu_has_native_bf16() else None)
    for native in (True, False):  # an explicit setting is kept
        assert autocast_dtype("fp32", CPU, native_cpu_bf16=native) is None
        assert autocast_dtype("bf16", CPU, native_cpu_bf16=native) is torch.bfloat16
    with pytest.raises(RuntimeError, match="fp16' needs a CUDA device"):
        autocast_dtype("fp16", CPU)


def _batch(lengths=(SR, 9000, 12000, 5000), seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    waves = 0.1 * torch.randn(len(lengths), int(lengths.max()), generator=g)
    waves = waves * (torch.arange(waves.shape[1])[None, :] < lengths[:, None])
    return waves, lengths, torch.arange(len(lengths)) % len(LABELS)


def test_a_bf16_step_keeps_fp32_weights_and_gradients_and_tracks_fp32():
    """Under bf16 autocast the logits stay within bf16's rounding of the fp32 ones, and the weights,
    their gradients and the loss stay fp32 (fp32 master weights: Adam updates them in fp32)."""
    torch.manual_seed(0)
    model = SERModel(SERConfig(labels=LABELS)).train()
    waves, lengths, labels = _batch()
    targets = torch.nn.functional.one_hot(labels, len(LABELS)).float()
    logits = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(1)  # the same SpecAugment masks
        model.zero_grad(set_to_none=True)
        dtype = autocast_dtype(precision, CPU)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            out = model(waves, lengths)
            total, _ = multi_loss(
                out,
                targets,
                labels,
                model.centers,
                model.supcon_proj,
                model.config.loss,
                torch.Generator().manual_seed(0),
            )
        total.backward()
        logits[precision] = out.logits.float().detach()
        assert total.dtype == torch.float32 and torch.isfinite(total)
        assert all(
            p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.main_parameters()
        )
    scale = logits["fp32"].abs().max()
    assert (logits["bf16"] - logits["fp32"]).abs().max() <= 0.05 * scale + 0.05


def test_collate_pads_to_the_multiple_and_keeps_every_sample():
    items = [(torch.arange(1.0, n + 1.0), n % 3, i) for i, n in enumerate((5, 17, 9))]
    for multiple, width in ((1, 17), (4, 20), (17, 17), (100, 100)):
        batch = collate_padded(items, multiple=multiple)
        assert batch.waves.shape == (3, width)
        assert batch.lengths.tolist() == [5, 17, 9] and batch.indices.tolist() == [0, 1, 2]
        for row, (wave, _, _) in enumerate(items):
            assert torch.equal(batch.waves[row, : len(wave)], wave)
            assert not batch.waves[row, len(wave) :].any()
    multiple = round(PAD_SECONDS * SR)
    assert (
        collate_to_shapes(SR)(items[:1] + [(torch.ones(multiple + 1), 0, 3)]).waves.shape[1] == 2 * multiple
    )
    # a Hugging Face backbone's feature encoder sees padding: its batches stay at their longest wave
    assert collate_for(True, SR)(items).waves.shape == (3, 17)
    assert collate_for(False, SR)(items).waves.shape == (3, multiple)


def test_evaluation_padded_to_shapes_predicts_what_unpadded_batches_do():
    """Evaluation batches padded to multiples of PAD_SECONDS give the logits of batches padded to
    their longest utterance only (the model is padding-invariant in eval mode), in fp32 and bf16."""
    torch.manual_seed(2)
    model = SERModel(SERConfig(labels=LABELS)).eval()
    for module in model.modules():  # running statistics as after training, not the identity
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 1.5)
    waves, lengths, labels = _batch(lengths=(SR + 123, 7001, 4003))
    items = [(waves[b, : int(n)], int(labels[b]), b) for b, n in enumerate(lengths)]
    tight, shaped = collate_padded(items), collate_to_shapes(SR)(items)
    assert shaped.waves.shape[1] > tight.waves.shape[1]
    for dtype in (None, torch.bfloat16):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            a = model(tight.waves, tight.lengths).logits.float()
            b = model(shaped.waves, shaped.lengths).logits.float()
        tol = 1e-4 if dtype is None else 0.05 * a.abs().max().item() + 0.02
        torch.testing.assert_close(b, a, rtol=0, atol=tol)
        if dtype is None:
            assert torch.equal(a.argmax(1), b.argmax(1))


def test_conv_block_in_place_and_channels_last_matches_the_plain_reference():
    """The block (channels-last, mask and ReLU in place on BatchNorm's output) computes what the plain
    formula maxpool(relu(BN(conv(x · m))) · m) does, in training mode, values and gradients alike
    (the input's at valid frames)."""
    from ser_model.fbank_backbone import _ConvBlock2d

    torch.manual_seed(3)
    block = _ConvBlock2d(4, 8, time_pool=2).train()
    lengths = torch.tensor([21, 14, 9])
    mask = torch.arange(21)[None, :] < lengths[:, None]
    x = torch.randn(3, 4, 10, 21) * mask[:, None, None, :]

    def reference(inp):
        keep = mask[:, None, None, :].float()
        y = torch.relu(block.norm(block.conv(inp * keep))) * keep
        return torch.nn.functional.max_pool2d(y, (2, 2), ceil_mode=True)

    got_x, want_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, got_mask = block(got_x, mask)
    want = reference(want_x)
    torch.testing.assert_close(got, want)
    assert got_mask.tolist() == (torch.arange(11)[None, :] < ((lengths + 1) // 2)[:, None]).tolist()
    weights = torch.randn_like(want)
    grads = [
        torch.autograd.grad((out * weights).sum(), (inp, block.conv.weight))
        for out, inp in ((got, got_x), (want, want_x))
    ]
    # the input's gradient at padded frames never reaches a parameter (the block before zeroed them)
    keep = mask[:, None, None, :].float()
    # fp32 sums in another order (channels-last): equal to about 1e-5 of the gradients' scale
    torch.testing.assert_close(grads[0][0] * keep, grads[1][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-4)
