"""Prefect plugin: `prefect deployment run train-iemocap` with a deployment name and no flow name.

Stock Prefect wants `<flow>/<deployment>` (`prefect deployment run train/train-iemocap`, which keeps
working unchanged). This plugin resolves a name with no slash to the one deployment of that name,
whatever its flow, and fails with the matching or available full names when none or several match.

How it hooks in: Prefect 3.8 runs the `setup_environment` hook of every `prefect.plugins` entry point
on `import prefect` when plugins are enabled (`[plugins] enabled = true` in the project's
prefect.toml, or PREFECT_PLUGINS_ENABLED=true). The hook wraps the deployment lookup of the
`prefect deployment run` command, `prefect.cli.deployment._get_deployment`, as soon as that module is
imported (the CLI imports it lazily). That function is private, so `check_prefect_compatibility`
states what the patch relies on and a test runs it: a Prefect upgrade that moves it fails the tests.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import inspect
import logging
import sys
from types import ModuleType
from typing import Any

from prefect.plugins import register_hook

PREFECT_PLUGIN_API_REQUIRES = ">=0.1,<1"
CLI_MODULE = "prefect.cli.deployment"
PATCHED_FUNCTION = "_get_deployment"
PATCHED_SIGNATURE = ("client", "name", "deployment_id")

log = logging.getLogger(__name__)


class DeploymentNameError(LookupError):
    """A short deployment name matched no deployment, or more than one."""


def match_deployment_name(name: str, matches: list[str], available: list[str]) -> str:
    """The one full name `<flow>/<deployment>` among `matches` (deployments called `name`).

    Raises DeploymentNameError naming the candidates: all `available` full names when nothing
    matches, every match when several do.
    """
    if len(matches) == 1:
        return matches[0]
    if not matches:
        listing = ", ".join(sorted(available)) or "none"
        raise DeploymentNameError(f"no deployment named {name!r}; available deployments: {listing}")
    raise DeploymentNameError(
        f"deployment name {name!r} is ambiguous, it matches {', '.join(sorted(matches))}; "
        "run it by its full name <flow>/<deployment>"
    )


async def _full_names(client: Any, deployments: list[Any]) -> list[str]:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterId

    flow_ids = sorted({d.flow_id for d in deployments}, key=str)
    flows = (
        await client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=flow_ids))) if flow_ids else []
    )
    flow_names = {flow.id: flow.name for flow in flows}
    return sorted(f"{flow_names.get(d.flow_id, d.flow_id)}/{d.name}" for d in deployments)


async def resolve_deployment_name(name: str, client: Any) -> str:
    """Full name `<flow>/<deployment>` of `name`; a name with a slash is returned unchanged.

    `client` is a `prefect.client.orchestration.PrefectClient` (only `read_deployments` and
    `read_flows` are used). Raises DeploymentNameError when none or several deployments match.
    """
    if "/" in name:
        return name
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    named = await client.read_deployments(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
    )
    matches = await _full_names(client, [d for d in named if d.name == name])
    available = [] if matches else await _full_names(client, await client.read_deployments())
    return match_deployment_name(name, matches, available)


def check_prefect_compatibility(module: ModuleType) -> None:
    """Raise RuntimeError naming what changed if Prefect's CLI no longer has what the patch wraps."""
    import prefect

    fix = f"update flows/prefect_plugin.py for prefect {prefect.__version__}"
    where = f"{CLI_MODULE}.{PATCHED_FUNCTION}"
    target = getattr(module, PATCHED_FUNCTION, None)
    if target is None:
        raise RuntimeError(f"{where} no longer exists: {fix}")
    params = tuple(inspect.signature(getattr(target, "__wrapped__", target)).parameters)
    if params != PATCHED_SIGNATURE:
        raise RuntimeError(f"{where} takes {params}, the plugin expects {PATCHED_SIGNATURE}: {fix}")
    run = inspect.unwrap(module.run)
    if PATCHED_FUNCTION not in run.__code__.co_names:
        raise RuntimeError(f"{CLI_MODULE}.run no longer calls {PATCHED_FUNCTION}: {fix}")
    if not hasattr(module, "exit_with_error"):
        raise RuntimeError(f"{CLI_MODULE}.exit_with_error no longer exists: {fix}")


def patch_cli_module(module: ModuleType) -> None:
    """Wrap `module._get_deployment` so a name without a slash is resolved first (idempotent)."""
    check_prefect_compatibility(module)
    original = getattr(module, PATCHED_FUNCTION)
    if getattr(original, "resolves_short_names", False):
        return

    async def get_deployment(client: Any, name: str | None, deployment_id: str | None) -> Any:
        if name is not None and "/" not in name and deployment_id is None:
            try:
                name = await resolve_deployment_name(name, client)
            except DeploymentNameError as exc:
                module.exit_with_error(str(exc))
        return await original(client, name, deployment_id)

    get_deployment.__wrapped__ = original
    get_deployment.resolves_short_names = True
    setattr(module, PATCHED_FUNCTION, get_deployment)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when CLI_MODULE is imported, patches it right after it executes."""

    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != CLI_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _patch_or_warn(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def _patch_or_warn(module: ModuleType) -> None:
    try:
        patch_cli_module(module)
    except RuntimeError as exc:
        log.error("short deployment names are off, stock Prefect names only: %s", exc)


def install() -> None:
    """Patch the deployment CLI now if it is imported, else as soon as it is."""
    if CLI_MODULE in sys.modules:
        _patch_or_warn(sys.modules[CLI_MODULE])
    elif not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


@register_hook
def setup_environment(*, ctx: Any) -> None:
    """Prefect startup hook: install the short-name resolution; changes no environment variables."""
    install()
    return None
