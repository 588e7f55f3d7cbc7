"""The one S3 client factory of the project (:func:`s3_client`)."""

from __future__ import annotations


def s3_client(
    endpoint: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 60.0,
    max_attempts: int = 2,
):
    """A boto3 S3 client with path-style addressing (SeaweedFS, MinIO and AWS all accept it).
    Arguments left None fall to boto3's own chain (``AWS_*`` variables, profiles, instance roles):
    corpus sources use it that way, the stack's data bucket and infra/ with
    `ser_stack.settings.StackSettings`' values (``StackSettings.s3_client``)."""
    import boto3  # here: only S3 users pay for it
    from botocore.config import Config

    config = Config(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"mode": "standard", "max_attempts": max_attempts},
        s3={"addressing_style": "path"},
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )
