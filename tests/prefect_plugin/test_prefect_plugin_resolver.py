"""Short deployment names: the resolver against a reference, and the Prefect version guard."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import subprocess
import sys
import types
import uuid
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.prefect_plugin import (
    DeploymentNameError,
    check_prefect_compatibility,
    patch_cli_module,
    resolve_deployment_name,
)


@dataclass
class FakeFlow:
    name: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass
class FakeDeployment:
    name: str
    flow_id: uuid.UUID


class FakeClient:
    """The two PrefectClient reads the resolver uses, over (flow name, deployment name) pairs."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.flows = {name: FakeFlow(name) for name in {f for f, _ in pairs}}
        self.deployments = [FakeDeployment(d, self.flows[f].id) for f, d in pairs]
        self.calls = 0

    async def read_deployments(self, deployment_filter=None):
        self.calls += 1
        if deployment_filter is None:
            return list(self.deployments)
        wanted = set(deployment_filter.name.any_)
        return [d for d in self.deployments if d.name in wanted]

    async def read_flows(self, flow_filter=None):
        self.calls += 1
        wanted = set(flow_filter.id.any_)
        return [f for f in self.flows.values() if f.id in wanted]


def resolve(name: str, pairs: list[tuple[str, str]]) -> str:
    return asyncio.run(resolve_deployment_name(name, FakeClient(pairs)))


PAIRS = [("train", "train-iemocap"), ("train", "train-ravdess"), ("ingest", "ingest-iemocap")]


def test_short_name_resolves_to_its_flow():
    assert resolve("train-iemocap", PAIRS) == "train/train-iemocap"
    assert resolve("ingest-iemocap", PAIRS) == "ingest/ingest-iemocap"


def test_unknown_name_lists_every_available_deployment():
    with pytest.raises(DeploymentNameError) as error:
        resolve("train-savee", PAIRS)
    message = str(error.value)
    assert "'train-savee'" in message
    for flow_name, deployment in PAIRS:
        assert f"{flow_name}/{deployment}" in message


def test_ambiguous_name_lists_both_full_names():
    with pytest.raises(DeploymentNameError) as error:
        resolve("train-iemocap", [*PAIRS, ("retrain", "train-iemocap")])
    message = str(error.value)
    assert "ambiguous" in message
    assert "train/train-iemocap" in message and "retrain/train-iemocap" in message
    assert "ingest/ingest-iemocap" not in message


def test_name_with_a_slash_goes_to_stock_prefect_untouched():
    client = FakeClient(PAIRS)
    assert asyncio.run(resolve_deployment_name("any/thing", client)) == "any/thing"
    assert client.calls == 0


names = st.sampled_from(["a", "b", "train-x", "ingest-x"])


@settings(max_examples=60, deadline=None)
@given(pairs=st.lists(st.tuples(names, names), unique=True, max_size=6), name=names)
def test_resolver_agrees_with_a_reference(pairs, name):
    expected = [f"{f}/{d}" for f, d in pairs if d == name]
    if len(expected) == 1:
        assert resolve(name, pairs) == expected[0]
    else:
        with pytest.raises(DeploymentNameError) as error:
            resolve(name, pairs)
        listed = expected or [f"{f}/{d}" for f, d in pairs]
        assert all(full in str(error.value) for full in listed)


def test_prefect_still_has_what_the_patch_wraps():
    """Fails loudly after a Prefect upgrade that moves the deployment lookup of `prefect deployment run`."""
    check_prefect_compatibility(importlib.import_module("prefect.cli.deployment"))


def test_version_guard_names_the_missing_function():
    module = types.ModuleType("prefect.cli.deployment")
    with pytest.raises(RuntimeError, match="_get_deployment no longer exists"):
        check_prefect_compatibility(module)


def test_patch_is_idempotent():
    module = importlib.import_module("prefect.cli.deployment")
    patch_cli_module(module)
    patched = module._get_deployment
    patch_cli_module(module)
    assert module._get_deployment is patched
    assert patched.resolves_short_names


def test_plugin_is_registered_and_enabled_from_the_project_folder(repo_root):
    entry_points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="prefect.plugins")}
    assert entry_points.get("ser-short-deployment-names") == "flows.prefect_plugin"
    probe = (
        "import prefect.cli.deployment as m; print(getattr(m._get_deployment, 'resolves_short_names', False))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=repo_root, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "True", out.stderr
