"""Issue 22 "Done when", end to end on the live stack with real RAVDESS speech.

ingest actors 01–08 (one recording per emotion each: what the champion learnt is not what is
checked) and train fold 0 (the ``ingest-ravdess`` and ``train-ravdess`` deployments)
→ that version is the champion → actors 09–12 join the same root → ``retrain-nightly`` with that
root → experiment ``ser-ravdess`` holds a run tagged ``ser.run_kind=monitor`` for that champion and
the new manifest, with ``new_rows`` 240 (4 actors × 60 recordings), a ``UA`` metric, the champion's
fold mean beside it, the confusion and one drift figure per feature it compares → the promotion
decision of the version the retraining registered quotes that run.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest
import soundfile as sf
from mlflow.tracking import MlflowClient

from ser_model.monitor import FEATURES, PREDICTED_FEATURE
from ser_stack.names import (
    CHAMPION_VERSION_TAG,
    MONITOR_MANIFEST_TAG,
    MONITOR_QUOTE_TAG,
    RUN_KIND_MONITOR,
    RUN_KIND_TAG,
)
from tests.e2e.test_train_ravdess import (
    FAST,
    INLINE_FOLDS,
    build_subset,
    flow_run_state_and_logs,
    run_cli,
    run_deployment,
    user_shell_env,
    versions_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "ser-ravdess"
TINY = {
    **FAST,
    "train.epochs": 1,
    "train.batch_size": 32,
    "train.eval_batch_size": 32,
    "train.release_seeds": 1,
}
"""One epoch in large batches, and a release of one model rather than the preset's ensemble of two
(a single release model also trained on every speaker, so it has no validation rows either): the
champion trains on 64 recordings, the retraining on 304 (fold 0 and the release model each)."""
WATCH_S = 1200
"""How long each deployment run may take: the retraining reads 240 recordings of 4 new actors."""


def copy_actors(shared: Path, root: Path, actors: range, gain: float) -> int:
    """Every speech recording of ``actors`` into ``root`` in the RAVDESS layout, rescaled by
    ``gain`` (≠ 1), so their content is new to the stack even when an earlier run of this test
    ingested the same actors; returns how many."""
    count = 0
    for actor in actors:
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for source in sorted((shared / folder.name).glob("03-01-*")):
            audio, rate = sf.read(source, dtype="float32")
            sf.write(folder / source.name, audio * gain, rate, subtype="PCM_16")
            count += 1
    return count


@pytest.mark.timeout(3000)  # three deployments on real recordings on 2 cores, shared with other work
def test_champion_is_scored_on_new_speakers_and_the_decision_quotes_it(
    stack, shared_ravdess, repo_root, tmp_path, monkeypatch
):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {**os.environ, **stack.client_env()}
    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "ravdess"
    assert len(build_subset(shared_ravdess, root, files_per_emotion=1)) == 64  # actors 01–08
    client = MlflowClient(stack.tracking_uri)
    shell = user_shell_env(stack)

    run_cli([sys.executable, "-m", "flows.deploy"], env, repo_root)
    runs = [
        run_deployment(
            "ingest-ravdess", {"root": str(root), "announce": False}, repo_root, tmp_path, {}, shell, WATCH_S
        ),
        run_deployment(
            "train-ravdess",
            {"overrides": TINY, "folds": [0]},
            repo_root,
            tmp_path,
            INLINE_FOLDS,
            shell,
            WATCH_S,
        ),
    ]
    champion = versions_of(client, NAME)[-1]
    champion_data = client.get_model_version(NAME, champion).tags["ser.data_fingerprint"]
    # the model trained on actors 01–08 is the champion, whatever earlier tests left in the registry
    client.set_registered_model_alias(NAME, "champion", champion)

    assert copy_actors(shared_ravdess, root, range(9, 13), gain=0.5 + 0.4 * random.random()) == 240
    retrain = {"corpora": ["ravdess"], "roots": {"ravdess": str(root)}, "overrides": TINY, "folds": [0]}
    runs.append(run_deployment("retrain-nightly", retrain, repo_root, tmp_path, INLINE_FOLDS, shell, WATCH_S))
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
        states = [flow_run_state_and_logs(run_id) for run_id in runs]
    assert [state for state, _ in states] == ["Completed"] * 3, [(s, logs[-5:]) for s, logs in states]

    retrained = versions_of(client, NAME)[-1]
    assert int(retrained) > int(champion)
    new_data = client.get_model_version(NAME, retrained).tags["ser.data_fingerprint"]
    assert new_data != champion_data
    experiment = client.get_experiment_by_name(NAME)
    monitors = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{RUN_KIND_TAG}` = '{RUN_KIND_MONITOR}' and tags.`{CHAMPION_VERSION_TAG}` = '{champion}' "
        f"and tags.`{MONITOR_MANIFEST_TAG}` = '{new_data}'",
    )
    assert len(monitors) == 1, [m.data.tags for m in monitors]
    watched = monitors[0]
    metrics = watched.data.metrics
    trained_rows = client.get_run(
        client.get_model_version(NAME, champion).tags["ser.parent_run_id"]
    ).data.params
    assert metrics["new_rows"] == 240 and metrics["seen_rows"] == int(trained_rows["data.utterances"])
    assert 0.0 <= metrics["UA"] <= 1.0 and {"WA", "macro_f1", "champion_UA_mean", "UA_gap"} <= set(metrics)
    assert metrics["drift.speaker"] == 1.0  # all 240 new rows are from speakers the champion never heard
    assert metrics["drift.sample_rate"] == 0.0  # every file of the corpus is 16 kHz
    # the champion is cpu-fbank's release, trained on every speaker: with no validation rows of its
    # own there is nothing to compare its predictions on the new rows with (docs/MONITOR.md)
    assert f"drift.{PREDICTED_FEATURE}" not in metrics
    compared = [f for f in FEATURES if f != PREDICTED_FEATURE]
    figures = {a.path for a in client.list_artifacts(watched.info.run_id, "figures")}
    assert figures == {"figures/confusion_new_rows.png"} | {f"figures/drift_{f}.png" for f in compared}

    decision = client.get_model_version(NAME, retrained)
    quote = decision.tags[MONITOR_QUOTE_TAG]
    assert watched.info.run_id in quote and "on 240 new rows" in quote, quote
    assert f"UA {metrics['UA']:.4f}" in quote and quote in decision.description
