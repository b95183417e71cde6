"""S3 (MinIO, AWS, any S3 API) through boto3: ``s3://bucket/key`` files and ``s3://bucket/prefix/`` folders.

Credentials and endpoint come from the environment as boto3 reads them (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3 for MinIO; on Kubernetes from the
``spectrain-s3`` Secret). Transfers are multipart above 64 MiB and carry SHA-256 checksums that
S3 verifies on upload and boto3 verifies on download.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from spectrain.errors import SpectrainError

MULTIPART_BYTES = 64 * 2**20


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> "S3Uri":
        if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
            raise SpectrainError(f"not an S3 URI: {uri!r}", fix="write it as s3://bucket/key or s3://bucket/prefix/")
        bucket, _, key = uri[5:].partition("/")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3(spec: str) -> bool:
    return str(spec).startswith("s3://")


def client():
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    return boto3.client("s3", endpoint_url=endpoint)


def transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES)


@contextmanager
def failures(what: str, where: str) -> Iterator[None]:
    """Any boto3/botocore failure inside becomes a SpectrainError saying what failed, where, and what to check."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (Boto3Error, BotoCoreError, ClientError) as exc:
        raise SpectrainError(
            f"{what}: {exc}", where=where, fix="check the bucket name, AWS_ENDPOINT_URL and the S3 credentials"
        ) from exc


def list_objects(uri: str) -> list[dict]:
    """Objects under ``uri`` (a key or a prefix), sorted by key: [{"key", "size", "etag"}]."""
    location = S3Uri.parse(uri)
    with failures(f"cannot list {uri}", uri):
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=location.key)
        objects = [
            {"key": o["Key"], "size": o["Size"], "etag": o["ETag"].strip('"')}
            for page in pages
            for o in page.get("Contents", [])
            if not o["Key"].endswith("/")
        ]
    return sorted(objects, key=lambda o: o["key"])


def download(uri: str, destination: Path) -> list[Path]:
    """Copy the object ``uri``, or every object under the prefix ``uri``, into ``destination``.

    Keys keep their path below the prefix. An object already there with the same size is not fetched
    again (a retried step resumes). Returns the local files, sorted by key.
    """
    location = S3Uri.parse(uri)
    objects = list_objects(uri)
    if not objects:
        raise SpectrainError(f"nothing at {uri}", where=uri, fix="check the key or prefix (a prefix ends with /)")
    s3, config = client(), transfer_config()
    prefix = location.key if location.key.endswith("/") or len(objects) > 1 else location.key.rsplit("/", 1)[0] + "/"
    files = []
    for obj in objects:
        relative = obj["key"][len(prefix) :] if obj["key"].startswith(prefix) else obj["key"].rsplit("/", 1)[-1]
        target = destination / relative
        if not (target.exists() and target.stat().st_size == obj["size"]):
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            with failures(f"cannot download s3://{location.bucket}/{obj['key']}", uri):
                s3.download_file(
                    location.bucket, obj["key"], str(partial), Config=config, ExtraArgs={"ChecksumMode": "ENABLED"}
                )
            partial.rename(target)  # never a half file under the real name
        files.append(target)
    return files


def upload(source: Path, uri: str) -> list[str]:
    """Copy a file to the key ``uri``, or a folder to the prefix ``uri``; returns the written URIs."""
    location = S3Uri.parse(uri)
    s3, config = client(), transfer_config()
    source = Path(source)
    pairs = (
        [(source, location.key)]
        if source.is_file()
        else [
            (f, f"{location.key.rstrip('/')}/{f.relative_to(source).as_posix()}")
            for f in sorted(source.rglob("*"))
            if f.is_file()
        ]
    )
    for path, key in pairs:
        with failures(f"cannot upload {path} to s3://{location.bucket}/{key}", uri):
            s3.upload_file(str(path), location.bucket, key, Config=config, ExtraArgs={"ChecksumAlgorithm": "SHA256"})
    return [f"s3://{location.bucket}/{key}" for _, key in pairs]


def put_bytes(uri: str, data: bytes) -> None:
    """Write one small object (with a SHA-256 checksum S3 verifies)."""
    location = S3Uri.parse(uri)
    with failures(f"cannot write {uri}", uri):
        client().put_object(Bucket=location.bucket, Key=location.key, Body=data, ChecksumAlgorithm="SHA256")


def run_prefix(root: str, run_id: str, *parts: str) -> str:
    """``root/run_id/part/.../``: where one pipeline run keeps a step's resumable progress."""
    S3Uri.parse(root)
    return "/".join([root.rstrip("/"), run_id, *parts]) + "/"


# Checkpoint folders (checkpoint-<step>/) under a prefix. The marker object is written after the
# folder's last file, so a reader never resumes from a half-uploaded copy.
COMPLETE = "COMPLETE"


def upload_checkpoint(folder: Path, uri: str) -> str:
    """Copy ``folder`` to ``uri/<folder name>/``, then its COMPLETE marker; returns the folder's URI."""
    target = f"{uri.rstrip('/')}/{Path(folder).name}/"
    upload(folder, target)
    put_bytes(target + COMPLETE, b"")
    return target


def latest_checkpoint(uri: str) -> tuple[int, str] | None:
    """(step, URI) of the newest complete ``checkpoint-<step>/`` under the prefix ``uri``, or None."""
    location = S3Uri.parse(uri)
    prefix = location.key.rstrip("/") + "/" if location.key else ""
    steps = []
    for obj in list_objects(f"s3://{location.bucket}/{prefix}"):
        folder, _, name = obj["key"][len(prefix) :].partition("/")
        if name == COMPLETE and folder.startswith("checkpoint-") and folder[len("checkpoint-") :].isdigit():
            steps.append(int(folder[len("checkpoint-") :]))
    if not steps:
        return None
    step = max(steps)
    return step, f"s3://{location.bucket}/{prefix}checkpoint-{step}/"
