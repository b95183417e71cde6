"""checkpoint_uri: finished conversations survive the loss of the step's disk (a KFP retry is a new pod).

S3 is a real HTTP endpoint on loopback (moto server); the chat endpoint is the stand-in that can fail
on cue (tests/support/servers.py FlakyServer), because the point is what happens around failures.
"""

import json

import boto3
import pytest

from spectrain.components.regenerate.config import RegenerateConfig
from spectrain.components.regenerate.regenerate import run
from spectrain import config as configs
from spectrain import s3
from spectrain.errors import SpectrainError
from tests.support.servers import FlakyServer

PROMPTS = [f"p{i}" for i in range(10)]


@pytest.fixture
def bucket(s3_endpoint):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="regen")
    return client


def records_on_s3(prefix: str) -> list[dict]:
    client = boto3.client("s3", endpoint_url=s3.client().meta.endpoint_url)
    objects = s3.list_objects(f"s3://regen/{prefix}")
    return [
        json.loads(line)
        for o in objects
        for line in client.get_object(Bucket="regen", Key=o["key"])["Body"].read().decode().splitlines()
    ]


def test_a_new_pod_resumes_from_s3_without_asking_the_server_again(bucket, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(
        "".join(json.dumps({"id": p, "conversations": [{"from": "User", "value": p}]}) + "\n" for p in PROMPTS)
    )
    uri = "s3://regen/runs/run-1/regenerate/"

    # First pod: half the conversations fail for good (the server breaks down), the rest finish.
    broken = FlakyServer({p: ["503"] * 10 for p in PROMPTS[5:]})
    first = run(
        RegenerateConfig(
            dataset=str(data),
            output=str(tmp_path / "pod1" / "out.jsonl"),
            endpoint=broken.url,
            model="base",
            max_retries=0,
            max_failure_ratio=1.0,
            checkpoint_uri=uri,
            checkpoint_interval_s=0,
        )
    )
    assert (first["done"], first["failed"]) == (5, 5)
    assert first["checkpoint"] == {"uri": uri, "restored": 0, "uploaded": 5}
    assert sorted(r["conversation_id"] for r in records_on_s3("runs/run-1/regenerate/")) == PROMPTS[:5]

    parts_before = len(s3.list_objects(uri))  # one or more records per part, however the pushes overlapped

    # Second pod: an empty disk. The finished five come back from S3; only the other five are requested.
    healthy = FlakyServer({})
    output = tmp_path / "pod2" / "out.jsonl"
    second = run(
        RegenerateConfig(
            dataset=str(data),
            output=str(output),
            endpoint=healthy.url,
            model="base",
            checkpoint_uri=uri,
            checkpoint_interval_s=3600,
        )
    )
    assert second["resumed"] == 5 and second["done"] == 5
    assert sorted({prompt for prompt, _ in healthy.attempts}) == PROMPTS[5:]
    assert sorted(json.loads(line)["conversation_id"] for line in output.read_text().splitlines()) == PROMPTS
    # The long interval never came due: the end of the step uploaded the rest, as one more part.
    assert second["checkpoint"]["uploaded"] == 5
    assert sorted(r["conversation_id"] for r in records_on_s3("runs/run-1/regenerate/")) == PROMPTS
    assert len(s3.list_objects(uri)) == parts_before + 1

    # A local output that predates the checkpoint goes up on the first run that has one; nothing is requested.
    idle = FlakyServer({})
    third = run(
        RegenerateConfig(
            dataset=str(data),
            output=str(output),
            endpoint=idle.url,
            model="base",
            checkpoint_uri="s3://regen/runs/run-2/regenerate/",
        )
    )
    assert third["resumed"] == 10 and third["checkpoint"]["uploaded"] == 10 and not idle.attempts
    assert len(records_on_s3("runs/run-2/regenerate/")) == 10


def test_a_bad_checkpoint_uri_fails_before_any_request(bucket, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"id": "a", "conversations": [{"from": "User", "value": "a"}]}) + "\n")
    server = FlakyServer({})
    with pytest.raises(SpectrainError, match="cannot list s3://no-such-bucket/x/"):
        run(
            RegenerateConfig(
                dataset=str(data),
                output=str(tmp_path / "out.jsonl"),
                endpoint=server.url,
                model="base",
                checkpoint_uri="s3://no-such-bucket/x/",
            )
        )
    assert not server.attempts
    with pytest.raises(SpectrainError, match="regenerate.checkpoint_uri = '/tmp/somewhere' is not allowed"):
        configs.from_dict(RegenerateConfig, {"checkpoint_uri": "/tmp/somewhere"})
