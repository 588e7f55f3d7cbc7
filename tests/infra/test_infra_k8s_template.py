"""The Kubernetes work-pool job template of infra/k8s/ (infra/README.md) renders, with the job
variables the train flow sets on each fold run, into a Job with its GPU limit, image and the
environment the fold needs (Prefect, MLflow, S3, audio cache)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.utilities.templating import apply_values

from flows.fold_runs import fold_job_variables

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "fold-job-template.json"


def render(variables: dict) -> dict:
    """What a Prefect worker does: the variables' defaults, overridden by the run's job variables,
    placed into the job configuration."""
    template = json.loads(TEMPLATE.read_text())
    values = {
        name: spec["default"]
        for name, spec in template["variables"]["properties"].items()
        if "default" in spec
    }
    missing = [
        name for name in template["variables"].get("required", []) if name not in {**values, **variables}
    ]
    assert not missing, f"required job variables not set: {missing}"
    return apply_values(
        template["job_configuration"], {**values, **variables, "command": "python -m prefect.engine"}
    )


def test_each_fold_renders_as_a_job_with_its_gpus_image_and_environment():
    variables = fold_job_variables(
        "iemocap", 3, {"SER_FOLD_JOB_VARIABLES": json.dumps({"gpus": 4, "image": "registry/ser:0.1.0"})}
    )
    config = render(variables)
    assert "{{" not in json.dumps(config), "every placeholder is filled"
    container = config["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["image"] == "registry/ser:0.1.0"
    assert (
        config["name"] == "ser-iemocap-fold-3"
        and config["job_manifest"]["metadata"]["generateName"] == "ser-iemocap-fold-3-"
    )
    assert {
        "PREFECT_API_URL",
        "MLFLOW_TRACKING_URI",
        "AWS_ENDPOINT_URL_S3",
        "SER_DATA_BUCKET",
        "SER_AUDIO_CACHE_DIR",
        "SER_AUDIO_CACHE_BYTES",
    } <= set(config["env"])
    assert container["envFrom"][0]["secretRef"]["name"] == "ser-stack", (
        "credentials come from a secret, not the template"
    )
    mounted = [Path(m["mountPath"]) for m in container["volumeMounts"]]
    caches = {name: Path(config["env"][name]) for name in ("SER_AUDIO_CACHE_DIR", "SER_FEATURE_CACHE_DIR")}
    for name, folder in caches.items():
        assert any(folder.is_relative_to(m) for m in mounted), (
            f"{name}={folder} is not on a mounted volume {mounted}"
        )
    assert not caches["SER_AUDIO_CACHE_DIR"].is_relative_to(caches["SER_FEATURE_CACHE_DIR"])
    assert not caches["SER_FEATURE_CACHE_DIR"].is_relative_to(caches["SER_AUDIO_CACHE_DIR"]), (
        "each cache has its own folder"
    )


def test_the_release_fold_and_defaults_render_too():
    config = render(fold_job_variables("ravdess", -1, {"SER_FOLD_JOB_VARIABLES": '{"image": "ser:dev"}'}))
    assert config["name"] == "ser-ravdess-release"
    assert (
        config["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"
        ]
        == 1
    )
