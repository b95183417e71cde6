"""spectrain.s3 against a real S3 HTTP endpoint (moto server on loopback): folders, multipart, checksums."""

import os

import boto3
import pytest

from spectrain import s3
from spectrain.errors import SpectrainError


def test_a_folder_goes_up_and_comes_back_byte_for_byte(s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(s3, "MULTIPART_BYTES", 5 * 2**20)  # S3's smallest part, so a test file is multipart
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="artifacts")
    source = tmp_path / "draft"
    (source / "sub").mkdir(parents=True)
    big = os.urandom(11 * 2**20)
    (source / "model.safetensors").write_bytes(big)
    (source / "sub" / "config.json").write_text('{"a": 1}')

    written = s3.upload(source, "s3://artifacts/runs/7/draft/")
    assert written == ["s3://artifacts/runs/7/draft/model.safetensors", "s3://artifacts/runs/7/draft/sub/config.json"]
    objects = {o["key"]: o for o in s3.list_objects("s3://artifacts/runs/7/")}
    assert objects["runs/7/draft/model.safetensors"]["etag"].endswith("-3")  # 3 parts of 5 MiB
    head = boto3.client("s3", endpoint_url=s3_endpoint).head_object(
        Bucket="artifacts", Key="runs/7/draft/sub/config.json", ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"]

    files = s3.download("s3://artifacts/runs/7/draft/", tmp_path / "back")
    assert [f.relative_to(tmp_path / "back").as_posix() for f in files] == ["model.safetensors", "sub/config.json"]
    assert (tmp_path / "back" / "model.safetensors").read_bytes() == big
    assert not list((tmp_path / "back").rglob("*.partial"))


def test_a_finished_download_is_not_fetched_again(s3_endpoint, tmp_path):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="resume")
    client.put_object(Bucket="resume", Key="d/a.jsonl", Body=b"{}\n")
    (first,) = s3.download("s3://resume/d/", tmp_path)
    stamp = first.stat().st_mtime_ns
    (again,) = s3.download("s3://resume/d/", tmp_path)
    assert again == first and again.stat().st_mtime_ns == stamp


def test_bad_uris_are_clear_errors():
    with pytest.raises(SpectrainError, match="not an S3 URI"):
        s3.S3Uri.parse("https://bucket/key")
    assert str(s3.S3Uri.parse("s3://b/k/x.json")) == "s3://b/k/x.json"


def test_only_complete_checkpoints_are_resumed_from(s3_endpoint, tmp_path):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="ckpt")
    root = s3.run_prefix("s3://ckpt/spectrain/", "run-1", "train", "medusa")
    assert root == "s3://ckpt/spectrain/run-1/train/medusa/"
    assert s3.latest_checkpoint(root) is None
    for step in (5, 10):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        assert s3.upload_checkpoint(folder, root) == f"{root}checkpoint-{step}/"
    # A copy cut off before its marker (the pod died mid-upload) is newer but must not win.
    s3.upload(tmp_path / "checkpoint-10", f"{root}checkpoint-15/")
    assert s3.latest_checkpoint(root) == (10, f"{root}checkpoint-10/")
    assert s3.latest_checkpoint("s3://ckpt/spectrain/run-1/train/eagle3/") is None


def test_s3_failures_name_the_uri_and_the_fix(s3_endpoint, tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(SpectrainError, match="cannot upload .*a.txt") as error:
        s3.upload(tmp_path / "a.txt", "s3://no-such-bucket/a.txt")
    assert "credentials" in error.value.fix
    with pytest.raises(SpectrainError, match="cannot write s3://no-such-bucket/x"):
        s3.put_bytes("s3://no-such-bucket/x", b"")
    with pytest.raises(SpectrainError, match="not an S3 URI"):
        s3.run_prefix("/local/dir", "run-1")
