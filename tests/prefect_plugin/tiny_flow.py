"""A trivial flow the plugin's integration test deploys to the local work pool."""

from prefect import flow


@flow(name="ser-plugin-probe")
def probe() -> int:
    return 1
