"""Learning on real audio and on a Hugging Face backbone: the loop does optimise."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import soundfile

from data_contracts.labels import LABELS
from ser_model.config import EAMConfig, LossConfig, ModelConfig, SERConfig, TrainConfig
from ser_model.evaluation import evaluate_rows
from ser_model.hf_backbone import save_random_hf_backbone
from ser_model.model import SERModel
from ser_model.train import fit
from tests.train.synthetic import LABELS as SYNTHETIC_LABELS


def _ravdess_rows(root: Path, actor: int, statements: tuple[int, ...]) -> list[dict]:
    """Manifest rows of one actor: every emotion, intensity 01, repetition 01, the given statements."""
    rows = []
    for emotion in range(1, 9):
        for statement in statements:
            name = f"03-01-{emotion:02d}-01-{statement:02d}-01-{actor:02d}"
            rel = f"Actor_{actor:02d}/{name}.flac"
            if not (root / rel).is_file():
                continue
            info = soundfile.info(root / rel)
            rows.append(
                dict(
                    utt_id=name,
                    corpus="ravdess",
                    path=rel,
                    speaker=f"Actor_{actor:02d}",
                    session=f"Actor_{actor:02d}",
                    gender="M" if actor % 2 else "F",
                    label=LABELS["ravdess"][emotion - 1],
                    label_raw=f"{emotion:02d}",
                    duration_s=info.frames / info.samplerate,
                    sample_rate=info.samplerate,
                    channels=info.channels,
                    sha256=name,
                    fold=0,
                )
            )
    return rows


@pytest.mark.slow
def test_sixteen_real_utterances_are_learnt_to_full_train_accuracy(shared_ravdess, tmp_path):
    train = _ravdess_rows(shared_ravdess, 1, (1, 2))
    manifest = pd.DataFrame(
        train + _ravdess_rows(shared_ravdess, 2, (1,)) + _ravdess_rows(shared_ravdess, 3, (1,))
    )
    assert len(train) == 16, "expected 8 emotions x 2 statements of Actor_01 in the shared copy"
    folds = pd.DataFrame(
        {"fold": 0, "speaker": ["Actor_01", "Actor_02", "Actor_03"], "role": ["train", "valid", "test"]}
    )
    config = SERConfig(
        labels=LABELS["ravdess"],
        corpus="ravdess",
        model=ModelConfig(
            n_mels=64,
            fbank_dim=64,
            fbank_layers=1,
            fbank_heads=4,
            embed_dim=32,
            flam_dropout=0.0,
            head_dropout=0.0,
            fbank_dropout=0.0,
            spec_time_masks=0,
            spec_freq_masks=0,
        ),
        eam=EAMConfig(enabled=False),
        loss=LossConfig(supcon=False, center=False),
        train=TrainConfig(epochs=45, batch_size=8, lr=1e-3, lr_decay=1.0, max_seconds=4.0, valid_every=45),
    )
    fit(config, manifest, folds, 0, shared_ravdess, tmp_path, resume=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train"]["loss"] < 0.3 * records[0]["train"]["loss"]
    last = SERModel.from_pretrained(tmp_path / "checkpoints" / "last")
    metrics = evaluate_rows(last, pd.DataFrame(train), shared_ravdess, device="cpu")
    assert metrics["WA"] == 1.0, metrics["confusion"]


def test_tiny_random_wavlm_trains_end_to_end(synthetic_corpus, tmp_path):
    root, manifest, folds = synthetic_corpus
    backbone = save_random_hf_backbone(tmp_path / "tiny_wavlm")
    config = SERConfig(
        labels=SYNTHETIC_LABELS,
        corpus="ravdess",
        model=ModelConfig(backbone=f"hf:{backbone}", flam_heads=2, embed_dim=16),
        loss=LossConfig(supcon_proj_dim=16),
        train=TrainConfig(epochs=2, batch_size=4, eval_batch_size=8, max_seconds=1.0),
    )
    result = fit(config, manifest, folds, 0, root, tmp_path / "out", resume=False)
    assert result.test["n"] == 6
    confusion = result.test["confusion"]  # reference UA: the mean recall over the classes tested
    recalls = [row[c] / sum(row) for c, row in enumerate(confusion) if sum(row)]
    assert result.test["UA"] == pytest.approx(sum(recalls) / len(recalls))
    reloaded = SERModel.from_pretrained(tmp_path / "out" / "best")
    assert reloaded.config.model.backbone == f"hf:{backbone}"
    test_rows = manifest[manifest["speaker"].isin(result.speakers["test"])]
    again = evaluate_rows(reloaded, test_rows, root, device="cpu")  # the saved model is the one tested
    assert again["confusion"] == confusion and again["UA"] == pytest.approx(result.test["UA"])
    assert (tmp_path / "out" / "best" / "backbone_config.json").is_file()
    before = SERModel(config).state_dict()
    after = reloaded.state_dict()
    changed = [
        name
        for name in after
        if name.startswith("backbone.model.encoder") and not after[name].equal(before[name])
    ]
    assert changed, "fine-tuning must update the WavLM transformer"
