"""SERModel end to end with a tiny random WavLM (local folder, offline) and with the fbank backbone."""

import json
import shutil

import pytest
import torch

from ser_model.config import LossConfig, ModelConfig, SERConfig
from ser_model.config_validation import ConfigError
from ser_model.fbank_backbone import FbankBackbone
from ser_model.flam import mean_pool
from ser_model.hf_backbone import HFBackbone, save_random_hf_backbone, tiny_wavlm_config
from ser_model.losses import multi_loss
from ser_model.model import SERModel

torch.set_num_threads(2)

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

LABELS = ("neutral", "happy", "angry", "sad")
SR = 16000


@pytest.fixture(scope="module")
def tiny_wavlm_folder(tmp_path_factory):
    return save_random_hf_backbone(tmp_path_factory.mktemp("tiny_wavlm"))


def _batch(lengths=(SR, 6000, 9000), seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    waves = torch.randn(len(lengths), int(lengths.max()), generator=g) * 0.1
    waves = waves * (torch.arange(waves.shape[1])[None, :] < lengths[:, None])
    labels = torch.arange(len(lengths)) % len(LABELS)
    return waves, lengths, labels


def _hf_config(folder, **model):
    return SERConfig(labels=LABELS, model=ModelConfig(backbone=f"hf:{folder}", **model))


def _train_step(model, waves, lengths, labels):
    model.train()
    out = model(waves, lengths)
    targets = torch.nn.functional.one_hot(labels, len(LABELS)).float()
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
    return out


def _assert_padding_invariant(model, waves, lengths):
    model.eval()
    with torch.no_grad():
        batched = model(waves, lengths)
        for b in range(len(lengths)):
            n = int(lengths[b])
            alone = model(waves[b : b + 1, :n], lengths[b : b + 1])
            torch.testing.assert_close(batched.pooled[b], alone.pooled[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(batched.logits[b], alone.logits[0], rtol=1e-4, atol=1e-4)


def test_tiny_wavlm_finetune_end_to_end_and_offline_reload(tiny_wavlm_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone_copy = shutil.copytree(tiny_wavlm_folder, tmp_path / "backbone")
    model = SERModel(_hf_config(backbone_copy))
    waves, lengths, labels = _batch()
    out = _train_step(model, waves, lengths, labels)
    backbone = model.backbone
    assert isinstance(backbone, HFBackbone) and backbone.frame_rate == 50
    assert out.logits.shape == (3, 4) and out.embedding.shape == (3, 64) and out.frames.shape[2] == 32
    assert out.frame_mask.sum(1).tolist() == backbone.model._get_feat_extract_output_lengths(lengths).tolist()
    encoder_cnn = list(backbone.model.feature_extractor.parameters())
    assert all(not p.requires_grad and p.grad is None for p in encoder_cnn)  # CNN feature encoder frozen
    transformer = [p for n, p in backbone.model.named_parameters() if n.startswith("encoder.")]
    assert transformer and all(p.grad is not None for p in transformer)  # transformer fine-tuned
    assert backbone.layer_weights is not None and backbone.layer_weights.weights.grad is not None
    assert model.centers.grad is not None

    model.eval()
    with torch.no_grad():
        logits = model(waves, lengths).logits
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "backbone_config.json",
        "config.json",
        "labels.json",
        "model.safetensors",
    ]
    assert json.loads((tmp_path / "ckpt" / "labels.json").read_text()) == list(LABELS)
    shutil.rmtree(backbone_copy)  # the checkpoint alone must be enough
    loaded = SERModel.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(waves, lengths).logits, logits)
    assert loaded.config == model.config


def test_tiny_wavlm_is_padding_invariant(tiny_wavlm_folder):
    torch.manual_seed(0)
    model = SERModel(_hf_config(tiny_wavlm_folder))
    waves, lengths, _ = _batch()
    _assert_padding_invariant(model, waves, lengths)


@pytest.mark.parametrize("mode", ["frozen", "weighted_sum"])
def test_frozen_modes_send_no_gradient_into_the_backbone(tiny_wavlm_folder, mode):
    model = SERModel(_hf_config(tiny_wavlm_folder, backbone_mode=mode))
    waves, lengths, labels = _batch()
    _train_step(model, waves, lengths, labels)
    backbone = model.backbone
    assert not backbone.model.training  # no dropout/SpecAugment inside a frozen backbone
    assert all(not p.requires_grad and p.grad is None for p in backbone.model.parameters())
    assert (backbone.layer_weights is not None) == (mode == "weighted_sum")
    if mode == "weighted_sum":
        assert backbone.layer_weights.weights.grad is not None
    assert model.embed.weight.grad is not None
    assert not any(p is q for p in model.main_parameters() for q in backbone.model.parameters())


def test_hf_backbone_from_config_dict_matches_the_config():
    backbone = HFBackbone.from_config(tiny_wavlm_config().to_dict(), mode="frozen")
    assert backbone.out_dim == 32 and backbone.layer_weights is None


def test_fbank_end_to_end_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = SERModel(SERConfig(labels=LABELS))
    waves, lengths, labels = _batch()
    out = _train_step(model, waves, lengths, labels)
    assert torch.isfinite(out.logits).all()
    assert all(p.grad is not None for p in model.main_parameters())
    model.eval()
    with torch.no_grad():
        logits = model(waves, lengths).logits
    model.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "backbone_config.json").exists()
    loaded = SERModel.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(waves, lengths).logits, logits)


def test_fbank_is_padding_invariant():
    torch.manual_seed(1)
    model = SERModel(
        SERConfig(labels=LABELS, model=ModelConfig(fbank_time_pools=(1, 2, 2, 3), embed_norm="batch"))
    )
    _randomise_batch_norm_statistics(model)
    waves, lengths, _ = _batch(lengths=(SR, 401, 399, 7000, 100))
    _assert_padding_invariant(model, waves, lengths)


def _randomise_batch_norm_statistics(model):
    """Running statistics as after training (fresh ones are mean 0, variance 1: an identity that would hide padding leaks)."""
    g = torch.Generator().manual_seed(5)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("pools", [(2, 2, 2, 2), (1, 2, 2, 3), (3, 1, 1, 1)])
def test_fbank_frame_mask_is_exact(pools):
    backbone = FbankBackbone(
        ModelConfig(
            fbank_channels=(4, 8, 8, 8), fbank_time_pools=pools, fbank_dim=32, fbank_heads=2, fbank_layers=1
        )
    )
    lengths = torch.tensor([16000, 400, 399, 1, 12345, 560])
    waves = torch.randn(len(lengths), int(lengths.max()))
    frames, mask = backbone.eval()(waves, lengths)
    expected = []
    for n in lengths.tolist():
        t = max(1, 1 + (n - 400) // 160)  # 25 ms frames inside the signal, 10 ms hop
        for p in pools:
            t = -(-t // p)  # max pooling over time in ceil mode: ceil(t / p)
        expected.append(t)
    assert mask.sum(1).tolist() == expected == backbone.frame_lengths(lengths).tolist()
    feats, mel_mask = backbone.log_mel(waves, lengths)
    assert feats.shape[1] == max(1, 1 + (int(lengths.max()) - 400) // 160) == int(mel_mask.sum(1).max())
    assert frames.shape == (len(lengths), max(expected), 32)
    assert torch.all(frames[~mask] == 0)
    assert backbone.frame_rate == pytest.approx(100 / (pools[0] * pools[1] * pools[2] * pools[3]))


@pytest.mark.parametrize("norm", ["bin", "bin_mean", "utterance"])
def test_fbank_log_mel_normalisation_matches_a_reference(norm):
    backbone = FbankBackbone(ModelConfig(fbank_dim=32, fbank_heads=2, fbank_layers=1, fbank_norm=norm))
    lengths = torch.tensor([16000, 7000, 401])
    waves = torch.randn(len(lengths), int(lengths.max())) * torch.tensor([[0.1], [3.0], [1.0]])
    feats, mask = backbone.log_mel(waves, lengths)
    for b, n in enumerate(lengths.tolist()):
        raw = torch.log(
            backbone.melspec(waves[b, :n]) + 1e-6
        ).T.double()  # (T_b, n_mels), this utterance alone
        axis = None if norm == "utterance" else 0
        mean = raw.mean(dim=axis, keepdim=True) if axis == 0 else raw.mean()
        var = ((raw - mean) ** 2).mean(dim=axis, keepdim=True) if axis == 0 else ((raw - mean) ** 2).mean()
        reference = raw - mean if norm == "bin_mean" else (raw - mean) / torch.sqrt(var + 1e-5)
        t = raw.shape[0]
        assert int(mask[b].sum()) == t
        torch.testing.assert_close(feats[b, :t].double(), reference, rtol=1e-4, atol=1e-4)
        assert torch.all(feats[b, t:] == 0)
    if norm == "utterance":  # the mean spectrum survives: bins differ in their utterance means
        assert float(feats[0, : int(mask[0].sum())].mean(0).std()) > 0.01
    else:
        torch.testing.assert_close(
            feats[0, : int(mask[0].sum())].mean(0), torch.zeros(backbone.cfg.n_mels), atol=1e-4, rtol=0
        )


def test_fbank_utterance_norm_is_padding_invariant():
    torch.manual_seed(2)
    model = SERModel(SERConfig(labels=LABELS, model=ModelConfig(fbank_norm="utterance")))
    waves, lengths, _ = _batch(lengths=(SR, 401, 7000))
    _assert_padding_invariant(model, waves, lengths)


def test_fbank_norm_is_validated():
    with pytest.raises(ConfigError, match="fbank_norm"):
        ModelConfig(fbank_norm="global")


def test_fbank_spec_augment_only_in_training():
    backbone = FbankBackbone(
        ModelConfig(
            fbank_dim=32,
            fbank_heads=2,
            fbank_layers=1,
            fbank_dropout=0.0,
            spec_time_masks=4,
            spec_time_width=30,
        )
    )
    waves, lengths, _ = _batch()
    backbone.eval()
    with torch.no_grad():
        a, _ = backbone(waves, lengths)
        b, _ = backbone(waves, lengths)
        backbone.train()
        c, _ = backbone(waves, lengths)
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.isfinite(c).all()


def test_mean_pool_ablation_pools_backbone_frames():
    model = SERModel(SERConfig(labels=LABELS, model=ModelConfig(flam=False))).eval()
    waves, lengths, _ = _batch()
    with torch.no_grad():
        out = model(waves, lengths)
        frames, mask = model.backbone(waves, lengths)
    assert model.frame_attention is None and model.pooling is None and out.attention is None
    torch.testing.assert_close(out.pooled, mean_pool(frames, mask))


def test_parameter_groups_partition_the_trainable_parameters():
    model = SERModel(SERConfig(labels=LABELS))
    centers, main = model.center_parameters(), model.main_parameters()
    assert len(centers) == 1 and centers[0].shape == (4, 64)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in centers} | {id(p) for p in main} == trainable
    assert not {id(p) for p in centers} & {id(p) for p in main}


def test_switched_off_losses_build_no_parameters(tmp_path):
    config = SERConfig(labels=LABELS, loss=LossConfig(center=False, supcon=False))
    model = SERModel(config)
    assert model.centers is None and model.supcon_proj is None and model.center_parameters() == []
    model.save_pretrained(tmp_path)
    assert SERModel.from_pretrained(tmp_path).centers is None


def test_flam_heads_must_divide_the_backbone_width(tiny_wavlm_folder):
    with pytest.raises(ValueError, match="D=32 is not divisible by ModelConfig.flam_heads=5"):
        SERModel(_hf_config(tiny_wavlm_folder, flam_heads=5))


def test_loading_an_incomplete_folder_names_what_is_missing(tmp_path):
    SERModel(SERConfig(labels=LABELS)).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['model.safetensors'\]"):
        SERModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("text", ['["neutral", ', '{"a": 1}'])
def test_a_corrupt_labels_file_is_named(tmp_path, text):
    SERModel(SERConfig(labels=LABELS)).save_pretrained(tmp_path)
    (tmp_path / "labels.json").write_text(text)
    with pytest.raises(ValueError, match=r"labels\.json: .*expected a JSON list of class names"):
        SERModel.from_pretrained(tmp_path)


def test_bad_lengths_are_rejected():
    model = SERModel(SERConfig(labels=LABELS))
    waves, lengths, _ = _batch()
    with pytest.raises(
        ValueError, match=r"lengths: got values in \[6000, 16001\], expected 1 <= length <= L=16000"
    ):
        model(waves, lengths.clone().index_fill_(0, torch.tensor([0]), SR + 1))


def test_a_checkpoint_saved_with_the_old_lower_case_select_metric_still_loads(tmp_path):
    """Checkpoint folders written before the metric keys became "UA" / "WA" hold select_metric "ua"."""
    torch.manual_seed(0)
    model = SERModel(SERConfig(labels=LABELS)).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["select_metric"] == "UA"
    config["train"]["select_metric"] = "ua"
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = SERModel.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    waves, lengths, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(waves, lengths).logits, model(waves, lengths).logits)
