"""CUDA: EAM with a device generator keeps its invariants; the model trains under bf16 autocast and agrees with the CPU in fp32."""

import pytest
import torch

from ser_model.config import ModelConfig, SERConfig
from ser_model.eam import energy_adaptive_mixup
from ser_model.hf_backbone import tiny_wavlm_config
from ser_model.losses import multi_loss
from ser_model.model import SERModel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning"),
]

LABELS = ("neutral", "happy", "angry", "sad")


def _batch(device):
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([32000, 20000, 9000, 30000])
    waves = torch.randn(4, 32000, generator=g) * 0.1 * (torch.arange(32000)[None, :] < lengths[:, None])
    labels = torch.tensor([0, 1, 2, 3])
    return waves.to(device), lengths.to(device), labels.to(device)


def test_eam_on_cuda_with_a_cuda_generator():
    waves, lengths, labels = _batch("cuda")
    targets = torch.nn.functional.one_hot(labels, 4).float()
    r = energy_adaptive_mixup(
        waves, lengths, targets, generator=torch.Generator(device="cuda").manual_seed(0)
    )
    assert r.waves.device.type == "cuda" and r.mixed.any()
    assert torch.all((r.lam >= 0) & (r.lam < 0.5))
    torch.testing.assert_close(r.targets.sum(1), torch.ones(4, device="cuda"))
    for i in range(4):
        s, n = r.segment[i].tolist()
        outside = torch.ones(waves.shape[1], dtype=torch.bool, device="cuda")
        outside[s : s + n] = False
        assert torch.equal(r.waves[i, outside], waves[i, outside])


@pytest.mark.parametrize("backbone", ["fbank", "hf"])
def test_model_trains_under_bf16_autocast_and_matches_cpu_in_fp32(backbone, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # a true fp32 comparison
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    if backbone == "hf":
        from transformers import AutoModel

        AutoModel.from_config(tiny_wavlm_config()).save_pretrained(tmp_path / "wavlm")
        model_cfg = ModelConfig(backbone=f"hf:{tmp_path / 'wavlm'}")
    else:
        model_cfg = ModelConfig()
    torch.manual_seed(0)
    config = SERConfig(labels=LABELS, model=model_cfg)
    cpu_model = SERModel(config).eval()
    gpu_model = SERModel(config).eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.cuda()
    waves, lengths, labels = _batch("cpu")
    with torch.no_grad():
        ref = cpu_model(waves, lengths).logits
        got = gpu_model(waves.cuda(), lengths.cuda()).logits.cpu()
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)

    gpu_model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu_model(waves.cuda(), lengths.cuda())
        targets = torch.nn.functional.one_hot(labels.cuda(), 4).float()
        total, terms = multi_loss(
            out,
            targets,
            labels.cuda(),
            gpu_model.centers,
            gpu_model.supcon_proj,
            config.loss,
            torch.Generator(device="cuda").manual_seed(0),
        )
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpu_model.main_parameters())
