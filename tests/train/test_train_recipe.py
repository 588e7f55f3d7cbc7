"""The training recipe's parts: silence trimming, the learning-rate schedule, the embedding's
normalisation, the named presets, and one inference policy for every path."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from data_contracts.errors import UnknownCorpusError
from data_contracts.labels import CORPORA, LABELS
from ser_model.audio import load_audio, trim_silence
from ser_model.cli.train import train_config
from ser_model.config import SERConfig, TrainConfig
from ser_model.config_validation import ConfigError
from ser_model.data import EVAL_MAX_SECONDS, UtteranceDataset
from ser_model.export import export_onnx
from ser_model.inference import Predictor, prepare_waveform
from ser_model.model import SERModel
from ser_model.optimisation import lr_factor
from ser_model.presets import PRESETS, experiment_config

SR = 16000


def _trim_reference(wave: np.ndarray, trim_db: float, win: int = 400, hop: int = 160) -> np.ndarray:
    """Frame by frame in float64: keep from the first to the last frame within trim_db of the loudest."""
    energies = [
        float(np.sum(wave[s : s + win].astype(np.float64) ** 2)) for s in range(0, len(wave) - win + 1, hop)
    ]
    peak = max(energies)
    loud = [k for k, e in enumerate(energies) if e > peak * 10 ** (-trim_db / 10)]
    return wave[loud[0] * hop : loud[-1] * hop + win]


@pytest.mark.parametrize("seed", range(4))
def test_trim_silence_matches_a_frame_by_frame_reference(seed):
    rng = np.random.default_rng(seed)
    lead, speech, tail = rng.integers(0, 8000, 3)
    wave = np.concatenate(
        [1e-4 * rng.standard_normal(lead), rng.standard_normal(speech + 400), np.zeros(tail)]
    ).astype(np.float32)
    got = trim_silence(wave, SR, 40.0)
    np.testing.assert_array_equal(got, _trim_reference(wave, 40.0))
    start = (got.ctypes.data - wave.ctypes.data) // wave.itemsize  # a view into the input
    assert lead - 400 < start <= lead  # the first frame that holds speech
    assert speech + 400 <= len(got) < speech + 400 + 2 * 400


def test_trim_silence_leaves_what_it_cannot_trim():
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(16000).astype(np.float32)
    assert trim_silence(wave, SR, None) is wave
    assert trim_silence(np.zeros(16000, np.float32), SR, 40.0).shape == (16000,)
    short = wave[:100]
    assert trim_silence(short, SR, 40.0) is short
    assert len(trim_silence(wave, SR, 40.0)) >= 16000 - 160  # steady noise: nothing is silence


@pytest.mark.parametrize(
    "schedule, warmup", [("exponential", 0.0), ("exponential", 1.5), ("cosine", 1.0), ("cosine", 0.0)]
)
def test_lr_factor_matches_its_formula(schedule, warmup):
    tc = TrainConfig(epochs=6, schedule=schedule, warmup_epochs=warmup, lr_decay=0.5)
    per_epoch = 10
    factors = [lr_factor(step, per_epoch, tc) for step in range(6 * per_epoch)]
    w = warmup * per_epoch
    for step, f in enumerate(factors):
        if step < w:
            assert f == pytest.approx((step + 1) / w)
        elif schedule == "exponential":
            assert f == pytest.approx(0.5 ** (step // per_epoch))
        else:
            assert f == pytest.approx(0.5 * (1 + math.cos(math.pi * (step - w) / (60 - w))))
    after = factors[math.ceil(w) :]
    assert all(a >= b for a, b in zip(after, after[1:])), "no rise after the warm-up"
    assert max(factors) == pytest.approx(1.0)
    if schedule == "cosine":
        assert factors[-1] < 0.01


def test_fit_applies_the_schedule_per_update(synthetic_corpus, tmp_path):
    from ser_model.train import fit
    from tests.train.synthetic import tiny_config

    root, manifest, folds = synthetic_corpus
    config = tiny_config().with_overrides(
        {"train.epochs": 3, "train.schedule": "cosine", "train.warmup_epochs": 1.0, "train.lr": 1e-3}
    )
    result = fit(config, manifest, folds, 0, root, tmp_path / "run")
    lrs = [record["lr"] for record in result.history]  # the rate after each epoch's last update
    assert lrs[0] == pytest.approx(1e-3)  # end of the warm-up
    assert lrs[1] < lrs[0] and lrs[2] < 1e-5


def test_batch_norm_embedding_keeps_every_unit_alive():
    """With docs/METHOD.md's Linear → ReLU, near-identical pooled vectors leave units negative for every
    utterance (dead); BatchNorm centres each unit over the batch, so each is positive for some."""
    torch.manual_seed(0)
    config = experiment_config("ravdess", "cpu-fbank")
    model = SERModel(config).train()
    base = torch.randn(1, 32000) * 0.1
    waves = base + 0.01 * torch.randn(16, 32000)  # 16 near-identical utterances
    lengths = torch.full((16,), 32000)
    embedding = model(waves, lengths).embedding  # (16, 64)
    assert bool((embedding > 0).any(dim=0).all()), "a unit is zero for every utterance of the batch"
    before = model.embed_norm.running_mean.clone()
    single = model(waves[:1], lengths[:1]).embedding  # a batch of one trains too
    assert single.shape == (1, 64) and torch.equal(model.embed_norm.running_mean, before)


def test_every_preset_builds_for_every_corpus():
    for name in PRESETS:
        for corpus in CORPORA:
            config = experiment_config(corpus, name)
            assert config.labels == LABELS[corpus] and config.corpus == corpus
            assert config.with_overrides(PRESETS[name]) == config  # every value of the preset holds
    assert experiment_config("ravdess", "paper-wavlm").model.is_hf
    assert experiment_config("ravdess", "paper-wavlm").train.lr == 1e-4


def test_a_preset_holds_only_what_differs_from_the_defaults():
    """Every number lives in one place: a preset repeating a default would be a second copy of it."""
    defaults = SERConfig(labels=LABELS["ravdess"], corpus="ravdess")
    for name, settings in PRESETS.items():
        preset = defaults.with_overrides(settings)  # keys set together (release_seeds needs release_holdout)
        for key, value in settings.items():
            assert preset.value(key) != defaults.value(key), f"{name}: {key}={value!r} is the default"


def test_the_paper_recipe_is_the_defaults_on_wavlm_large():
    """docs/METHOD.md's numbers: Adam lr 1e-4 (centres 5e-3) x 7/8 per epoch, batch 16, 20 epochs,
    EAM on every sample at SNR U[-5, 10] dB, FLAM with 16 heads, 10 s crops."""
    paper = experiment_config("ravdess", "paper-wavlm")
    assert paper == SERConfig(labels=LABELS["ravdess"], corpus="ravdess").with_overrides(
        {"model.backbone": "hf:microsoft/wavlm-large"}
    )
    t, e = paper.train, paper.eam
    assert (t.lr, t.center_lr, t.lr_decay, t.schedule, t.batch_size, t.epochs) == (
        1e-4,
        5e-3,
        7 / 8,
        "exponential",
        16,
        20,
    )
    assert (e.enabled, e.mix_prob, e.snr_db_low, e.snr_db_high) == (True, 1.0, -5.0, 10.0)
    assert paper.model.n_flam_heads == 16 and paper.model.layer_weights and t.max_seconds == 10.0
    cpu = experiment_config("ravdess", "cpu-fbank")
    assert cpu.model.n_flam_heads == 4 and cpu.loss == replace(
        paper.loss, focal=False, center=False, supcon=False
    )
    # the release: the paper's (one model, selected on held-out speakers) and ours (RESULTS §3c:
    # two models on every speaker, their ensemble)
    assert (t.release_holdout, t.release_seeds) == (True, 1)
    assert (cpu.train.release_holdout, cpu.train.release_seeds) == (False, 2)


def test_the_obvious_command_gets_the_cpu_recipe():
    cpu = experiment_config("ravdess", "cpu-fbank")
    assert train_config("ravdess", "fbank", None, None, []) == cpu
    assert train_config("ravdess", None, None, None, []) == cpu
    assert (
        train_config("ravdess", "hf:/models/wavlm", None, None, []).train.lr
        == experiment_config("ravdess", "paper-wavlm").train.lr
    )
    assert train_config(
        "ravdess", None, None, 3, ["train.lr=5e-4"], preset="cpu-fbank"
    ) == cpu.with_overrides({"train.epochs": 3, "train.lr": 5e-4})


def test_preset_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"preset: got 'gpu-magic', expected one of \['cpu-fbank', 'demo', 'paper-wavlm', 'pipeline-check'\]",
    ):
        experiment_config("ravdess", "gpu-magic")
    with pytest.raises(UnknownCorpusError, match="unknown corpus 'crema'; expected one of iemocap"):
        experiment_config("crema", "cpu-fbank")
    path = tmp_path / "config.json"
    SERConfig(labels=LABELS["savee"], corpus="savee").to_json(path)
    with pytest.raises(ConfigError, match="either a preset or a base config"):
        train_config("savee", None, str(path), None, [], preset="cpu-fbank")
    with pytest.raises(ConfigError, match="do not match ravdess's classes"):
        train_config("ravdess", None, str(path), None, [])


@pytest.mark.slow
def test_every_inference_path_gives_the_same_probabilities(shared_ravdess, tmp_path):
    """Evaluation's dataset, `ser predict` (Predictor on files), waveforms given with their rate, and
    the ONNX graph fed `prepare_waveform` all see the same trimmed whole utterance."""
    torch.manual_seed(0)
    folder = tmp_path / "model"
    SERModel(experiment_config("ravdess", "cpu-fbank")).save_pretrained(folder)
    model = SERModel.from_pretrained(folder)
    files = sorted((shared_ravdess / "Actor_01").glob("*.flac"))[:3]
    rows = pd.DataFrame(
        {
            "path": [f"Actor_01/{f.name}" for f in files],
            "utt_id": [f.stem for f in files],
            "label": ["neutral"] * 3,
            "duration_s": [10.0] * 3,
        }
    )
    dataset = UtteranceDataset(
        rows,
        shared_ravdess,
        model.labels,
        sample_rate=SR,
        crop_seconds=EVAL_MAX_SECONDS,
        random_crop=False,
        trim_db=model.config.model.trim_db,
    )
    predictor = Predictor.from_pretrained(folder)
    by_file = predictor.predict_files(files)
    onnx_path = export_onnx(folder, tmp_path / "model.onnx")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for i, path in enumerate(files):
        wave, _, _ = dataset[i]
        raw = load_audio(path, SR)
        assert len(wave) < len(raw), "RAVDESS clips start and end in silence: trimming must cut some"
        with torch.no_grad():
            evaluated = torch.softmax(model(wave[None], torch.tensor([len(wave)])).logits, 1)[0].numpy()
        predicted = np.array([by_file[i]["probabilities"][label] for label in model.labels])
        from_array = predictor.predict_arrays([(raw, SR)])[0]
        prepared = prepare_waveform(raw, model.config.model)
        onnx = session.run(
            ["probabilities"], {"waves": prepared[None], "lengths": np.array([len(prepared)], dtype=np.int64)}
        )[0][0]
        np.testing.assert_allclose(predicted, evaluated, atol=1e-5)
        np.testing.assert_allclose(
            [from_array["probabilities"][label] for label in model.labels], evaluated, atol=1e-5
        )
        np.testing.assert_allclose(onnx, evaluated, atol=1e-4)
