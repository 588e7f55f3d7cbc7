"""A model is scored in fp32 on a CPU whatever the training's precision (issue 36): a fit trained in
bf16 records the scores `ser evaluate`, the Predictor and the ONNX graph give its model."""

from __future__ import annotations

import torch

from ser_model.data import EVAL_MAX_SECONDS, UtteranceDataset
from ser_model.evaluation import split_logits
from ser_model.model import SERModel
from ser_model.runtime import Runtime
from tests.train.synthetic import LABELS, tiny_config

CPU = torch.device("cpu")


def test_cpu_evaluation_is_fp32_under_a_bf16_runtime(synthetic_corpus):
    root, manifest, _ = synthetic_corpus
    torch.manual_seed(0)
    model = SERModel(tiny_config()).eval()
    dataset = UtteranceDataset(
        manifest, root, LABELS, sample_rate=16000, crop_seconds=EVAL_MAX_SECONDS, random_crop=False
    )
    fp32 = split_logits(model, dataset, 8, Runtime(0, 1, CPU, None))
    bf16_runtime = split_logits(model, dataset, 8, Runtime(0, 1, CPU, torch.bfloat16))
    assert (bf16_runtime == fp32).all()
    # the reference the rule guards against: the same batches under bf16 autocast score otherwise
    waves, lengths = dataset[0][0][None], torch.tensor([len(dataset[0][0])])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cast = model(waves, lengths).logits.float()
    with torch.no_grad():
        plain = model(waves, lengths).logits
    assert not torch.equal(cast, plain)
    torch.testing.assert_close(plain[0].numpy(), fp32[0], rtol=1e-4, atol=1e-4)
