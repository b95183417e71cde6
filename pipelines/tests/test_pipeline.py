"""The compiled pipeline: committed YAML is current, the DAG is the seed's workflow, Kubernetes settings are in."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spectrain.pipelines.speculative_decoding import compile_to

COMMITTED = Path(__file__).resolve().parents[1] / "speculative_decoding.yaml"


def compiled(tmp_path) -> tuple[str, list[dict]]:
    path = tmp_path / "pipeline.yaml"
    compile_to(path)
    text = path.read_text()
    return text, list(yaml.safe_load_all(text))


def test_committed_yaml_is_up_to_date(tmp_path):
    text, _ = compiled(tmp_path)
    assert COMMITTED.exists(), "run `make compile` and commit pipelines/speculative_decoding.yaml"
    assert COMMITTED.read_text() == text, "pipeline code changed: run `make compile` and commit the YAML"


def test_dag_reads_like_the_workflow(tmp_path):
    _, (spec, _) = compiled(tmp_path)
    root = spec["root"]["dag"]["tasks"]
    assert root["stop-server"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # runs after failure
    handler = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert {"serve-base-model", "regenerate", "stop-server-2", "for-loop-2", "summarize"} <= set(handler)
    loop = spec["components"]["comp-for-loop-2"]["dag"]["tasks"]
    assert set(loop) == {
        "warm-start-draft",
        "train-heads",
        "evaluate",
        "export",
        "condition-branches-3",
        "condition-6",
        "register",
    }
    crosscheck = spec["components"]["comp-condition-4"]["dag"]["tasks"]["vllm-crosscheck"]
    assert (
        crosscheck["inputs"]["parameters"]["expected_acceptance_length"]["componentInputParameter"]
        == "pipelinechannel--evaluate-Output"
    )  # our τ, handed to vLLM's check
    # register serves the draft with the k the cross-check timed fastest, or the export's when it did not run:
    # a OneOf of the two branches (its ValueFromOneof, which KFP's driver resolves from the branch that ran)
    branches = spec["components"]["comp-condition-branches-3"]["dag"]
    assert set(branches["tasks"]) == {"condition-4", "condition-5"}
    assert set(spec["components"]["comp-condition-5"]["dag"]["tasks"]) == {"no-served-speed"}
    (oneof,) = branches["outputs"]["parameters"].values()
    assert [s["producerSubtask"] for s in oneof["valueFromOneof"]["parameterSelectors"]] == [
        "condition-4",
        "condition-5",
    ]
    assert loop["register"]["inputs"]["parameters"]["served"]["taskOutputParameter"]["producerTask"] == (
        "condition-branches-3"
    )
    assert loop["evaluate"]["dependentTasks"] == ["train-heads"]
    assert loop["register"]["inputs"]["artifacts"]["draft"]["taskOutputArtifact"]["producerTask"] == "export"
    # the draft a mode continues is fetched when the run runs, and register logs the trained one for the next
    fetched = loop["train-heads"]["inputs"]["artifacts"]["parent"]["taskOutputArtifact"]
    assert fetched == {"outputArtifactKey": "parent", "producerTask": "warm-start-draft"}
    assert loop["warm-start-draft"]["inputs"]["parameters"]["source"]["componentInputParameter"].endswith("warm_start")
    logged = loop["register"]["inputs"]["artifacts"]["draft_checkpoint"]["taskOutputArtifact"]
    assert logged == {"outputArtifactKey": "draft_checkpoint", "producerTask": "train-heads"}
    assert (
        handler["regenerate"]["inputs"]["parameters"]["endpoint"]["taskOutputParameter"]["producerTask"]
        == "serve-base-model"
    )


def test_the_server_is_released_when_regeneration_ends_and_before_any_training(tmp_path):
    """Only regenerate needs vLLM: a stop after it frees the server's GPUs before the train pods ask for theirs,
    so a run holds max(serving, training) GPUs at a time (on a one-GPU cluster a train pod waiting for the
    server's GPU, which the exit handler frees only at the end, never schedules). The exit handler's stop stays
    for a run that fails earlier."""
    _, (spec, _) = compiled(tmp_path)
    handler = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    release = handler["stop-server-2"]
    assert release["taskInfo"]["name"] == "release-server"
    executors = spec["deploymentSpec"]["executors"]
    assert executors["exec-stop-server-2"] == executors["exec-stop-server"]  # the same step as the exit handler's
    assert release["dependentTasks"] == ["regenerate"]
    assert "stop-server-2" in handler["for-loop-2"]["dependentTasks"]  # every mode's training waits for it
    loop = spec["components"]["comp-for-loop-2"]["dag"]["tasks"]
    # (within the loop it waits only for the draft it continues: the release is outside the loop)
    assert loop["train-heads"].get("dependentTasks", []) == ["warm-start-draft"]
    mode = release["inputs"]["parameters"]["serve_mode"]["componentInputParameter"]
    assert mode == handler["serve-base-model"]["inputs"]["parameters"]["serve_mode"]["componentInputParameter"]


def test_kubernetes_settings_are_compiled_in(tmp_path):
    _, (spec, platform) = compiled(tmp_path)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in (
        "exec-serve-base-model",
        "exec-train-heads",
        "exec-evaluate",
        "exec-export",
        "exec-vllm-crosscheck",
        "exec-build-trtllm-engine",
    ):
        config = executors[name]
        assert config["pvcMount"][0]["mountPath"] == "/models"
        assert config["pvcMount"][0]["pvcNameParameter"]["componentInputParameter"].endswith("model_cache_pvc")
        assert config["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("node_selector")
        assert config["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("tolerations")
        container = spec["deploymentSpec"]["executors"][name]["container"]
        resources, env = container.get("resources", {}), {e["name"]: e["value"] for e in container.get("env", [])}
        # vLLM runs in its own Deployment (the serve step only waits for it); export restores the draft onto the
        # base without its decoder layers: neither needs a GPU
        if name in ("exec-serve-base-model", "exec-export"):
            assert "accelerator" not in resources and "SPECTRAIN_GPUS" not in env, name
            continue
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert config["emptyDirMounts"] == [{"volumeName": "shm", "mountPath": "/dev/shm", "medium": "Memory"}], name
        assert int(resources["accelerator"]["resourceCount"]) >= 1
        # the step knows how many it was given, and refuses to fall back to the CPU (spectrain.devices)
        assert env["SPECTRAIN_GPUS"] == resources["accelerator"]["resourceCount"], name
    secrets = {s["secretName"] for e in executors.values() for s in e.get("secretAsEnv", [])}
    assert {"spectrain-vllm", "spectrain-hf", "spectrain-mlflow", "spectrain-s3"} <= secrets
    # Steps that touch S3 or MLflow get the endpoints from the ConfigMap and the S3 keys from the Secret.
    for name in ("exec-regenerate", "exec-train-heads", "exec-evaluate", "exec-vllm-crosscheck", "exec-register"):
        (config_map,) = executors[name]["configMapAsEnv"]
        assert config_map["configMapName"] == "spectrain-config" and config_map["optional"]
        assert {k["envVar"] for k in config_map["keyToEnv"]} >= {"AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"}
        assert "spectrain-s3" in {s["secretName"] for s in executors[name]["secretAsEnv"]}, name


def test_caching_and_retries_are_chosen_per_step(tmp_path):
    _, (spec, _) = compiled(tmp_path)
    tasks = {
        name: task
        for component in spec["components"].values()
        for name, task in component.get("dag", {}).get("tasks", {}).items()
    }
    tasks.update(spec["root"]["dag"]["tasks"])
    never = {"serve-base-model", "stop-server", "stop-server-2", "regenerate", "register", "summarize"}  # side effects
    for name in never:
        assert tasks[name]["cachingOptions"] == {}, name
    for name in ("train-heads", "evaluate", "export", "vllm-crosscheck", "build-trtllm-engine"):  # pure functions
        assert tasks[name]["cachingOptions"] == {"enableCache": True}, name
    retried = {name for name, task in tasks.items() if "retryPolicy" in task}
    assert retried == {"regenerate", "register"}
    assert tasks["regenerate"]["retryPolicy"]["maxRetryCount"] == 2


def test_checkpoint_root_reaches_the_resumable_steps(tmp_path):
    _, (spec, _) = compiled(tmp_path)
    assert spec["root"]["inputDefinitions"]["parameters"]["checkpoint_root"]["defaultValue"] == ""
    for component in ("comp-regenerate", "comp-train-heads"):
        assert {"checkpoint_root", "run_id"} <= set(spec["components"][component]["inputDefinitions"]["parameters"])
    handler = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert (
        handler["regenerate"]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    )


def test_trtllm_engine_is_built_for_medusa_only_and_only_when_asked(tmp_path):
    _, (spec, _) = compiled(tmp_path)
    assert spec["root"]["inputDefinitions"]["parameters"]["export_trtllm_engine"]["defaultValue"] is False
    outer = spec["components"]["comp-for-loop-2"]["dag"]["tasks"]["condition-6"]
    assert (
        outer["triggerPolicy"]["condition"]
        == "inputs.parameter_values['pipelinechannel--export_trtllm_engine'] == true"
    )
    inner = spec["components"]["comp-condition-6"]["dag"]["tasks"]["condition-7"]
    assert (
        inner["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--modes-loop-item'] == 'medusa'"
    )
    build = spec["components"]["comp-condition-7"]["dag"]["tasks"]["build-trtllm-engine"]
    assert build["inputs"]["artifacts"]["draft"]["componentInputArtifact"] == "pipelinechannel--export-draft"
    executor = spec["deploymentSpec"]["executors"]["exec-build-trtllm-engine"]["container"]
    assert executor["image"].startswith("ghcr.io/spectrain/spectrain-trtllm:")


def test_images_come_from_one_place(tmp_path, monkeypatch):
    _, (spec, _) = compiled(tmp_path)
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"ghcr.io/spectrain/spectrain-{n}:0.1.0" for n in ("serve", "train", "trtllm", "orchestrate")}


def test_compile_settings_are_arguments_not_environment_read_at_import(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spectrain.cli",
            "compile",
            "--output",
            str(tmp_path / "p.yaml"),
            "--accelerator-type",
            "amd.com/gpu",
            "--train-gpus",
            "4",
            "--serve-gpus",
            "0",
            "--mode-parallelism",
            "1",
            "--registry",
            "registry.example.com:5000/team",
            "--image-tag",
            "1.2",
            "--base-size",
            "70b",
            "--resources",
            '{"train-heads": {"memory": "640Gi"}, "regenerate": {"cpu": "4"}}',
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    spec, _ = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    executors = spec["deploymentSpec"]["executors"]
    # Every task, and the vLLM pods of cluster mode, run the images of the registry and tag compiled in.
    assert {e["container"]["image"] for e in executors.values()} == {
        f"registry.example.com:5000/team/spectrain-{n}:1.2" for n in ("serve", "train", "trtllm", "orchestrate")
    }
    serve = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]["serve-base-model"]
    assert (
        serve["inputs"]["parameters"]["image"]["runtimeValue"]["constant"]
        == "registry.example.com:5000/team/spectrain-serve:1.2"
    )
    train = executors["exec-train-heads"]["container"]["resources"]["accelerator"]
    assert (train["resourceType"], int(train["resourceCount"])) == ("amd.com/gpu", 4)
    assert "accelerator" not in executors["exec-serve-base-model"]["container"].get("resources", {})
    assert spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]["for-loop-2"]["iteratorPolicy"] == {
        "parallelismLimit": 1
    }
    assert "train_gpus 4" in result.stdout
    # requests for a 70B base, two of them set by hand over those
    requested = {
        name.removeprefix("exec-"): (r.get("resourceCpuRequest"), r.get("resourceMemoryRequest"))
        for name, e in executors.items()
        for r in [e["container"]["resources"]]
    }
    assert requested["train-heads"] == ("32", "640Gi") and requested["regenerate"] == ("4", "4Gi")
    assert requested["evaluate"] == ("16", "200Gi") and requested["register"] == ("1", "8Gi")


def test_every_pod_requests_cpu_and_memory_and_tolerates_what_the_gpu_steps_tolerate(tmp_path):
    """Pods without requests are the first evicted under memory pressure, and a namespace LimitRange's defaults
    (often 512Mi) kill a step that loads an 8B base. Every step asks for what it needs at the compiled base size
    (memory also as the limit: an OOM kill at a known size); CPU steps tolerate the tolerations parameter too, so
    that a cluster whose every node is tainted for GPU work still runs them (they keep no node selector)."""
    from spectrain.pipelines.settings import STEP_RESOURCES

    _, (spec, platform) = compiled(tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    assert {name.removeprefix("exec-").removesuffix("-2") for name in executors} == set(STEP_RESOURCES)
    for name, executor in executors.items():
        resources = executor["container"]["resources"]
        cpu, memory = STEP_RESOURCES[name.removeprefix("exec-").removesuffix("-2")]["8b"]
        assert (resources["resourceCpuRequest"], resources["resourceMemoryRequest"]) == (cpu, memory), name
        assert resources["resourceMemoryLimit"] == memory and "resourceCpuLimit" not in resources, name
    assert executors["exec-train-heads"]["container"]["resources"]["resourceMemoryRequest"] == "80Gi"
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(kubernetes) == set(executors)
    for name, config in kubernetes.items():
        assert config["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("tolerations"), name
    cpu_steps = {"exec-regenerate", "exec-register", "exec-summarize", "exec-stop-server", "exec-stop-server-2"}
    assert not any("nodeSelector" in kubernetes[name] for name in cpu_steps)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--registry", "Registry.Example.com/team "], "registry"),
        (["--image-tag", "1.2:latest"], "image_tag"),
        (["--train-gpus", "-1"], "train_gpus is -1"),
        (["--base-size", "13b"], "base_size '13b' is not one of small, 8b, 70b"),
        (["--resources", '{"train": {"cpu": "8"}}'], "unknown step 'train'"),
        (["--resources", '{"evaluate": {"memory": "48GB"}}'], "memory '48GB' is not a memory quantity"),
        (["--resources", '{"evaluate": {"cpu": 8,}}'], "resources is not JSON"),
    ],
)
def test_bad_compile_settings_are_refused_before_compiling(tmp_path, flags, message):
    result = subprocess.run(
        [sys.executable, "-m", "spectrain.cli", "compile", "--output", str(tmp_path / "p.yaml"), *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_register_receives_everything_it_logs_as_artifacts_of_its_own_task(tmp_path):
    """On a cluster each step is a pod: a path another step wrote means nothing in register's pod."""
    _, (spec, _) = compiled(tmp_path)
    register = spec["components"]["comp-for-loop-2"]["dag"]["tasks"]["register"]["inputs"]["artifacts"]
    producers = {
        name: (a["taskOutputArtifact"]["producerTask"], a["taskOutputArtifact"]["outputArtifactKey"])
        for name, a in register.items()
        if "taskOutputArtifact" in a  # serve and regenerate results come in through the loop's inputs
    }
    assert producers["evaluation"] == ("evaluate", "evaluation")  # acceptance.png
    assert producers["training_curves"] == ("train-heads", "training_curves")
    assert producers["draft"] == ("export", "draft")
    assert {"train_result", "evaluate_result", "export_result"} <= set(producers)
    outputs = spec["components"]["comp-train-heads"]["outputDefinitions"]["artifacts"]
    assert "training_curves" in outputs
