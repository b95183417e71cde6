"""Hidden states of chosen base layers, captured by the vLLM server itself (serve image; vLLM's workers import it).

vLLM 0.32 serves hidden-state extraction as a speculative method, ``extract_hidden_states``: the base runs as
served and, at the layers named in ``eagle_aux_hidden_state_layer_ids``, keeps the residual stream of every token
(layer id k: after k decoder layers, before the final norm; 0 is the embeddings: what HF transformers returns as
``hidden_states[k]``) in a KV-cache group of its own. A KV connector writes each finished request's states to
``<directory>/<request id>.safetensors`` (``hidden_states`` [tokens, layers, hidden], ``token_ids`` [tokens]) and
returns the path in the response's ``kv_transfer_params.hidden_states_path``.

vLLM's connector (``ExampleHiddenStatesConnector``) copies the states out through a CUDA stream into pinned host
memory. On a CPU the worker turns CUDA streams and events into no-ops (vllm/v1/worker/cpu/shm.py), but pinned
memory has no allocator, so the write fails after the reply (``RuntimeError: pin_memory=True requires a CUDA or
other accelerator backend``) and no file appears. :class:`CpuHiddenStatesConnector` keeps everything of vLLM's
connector (scheduling, lock files, writer threads) and copies the rows with a plain clone instead; on a GPU vLLM's
own connector is the one to use (:func:`serve_arguments` picks it).
"""

from __future__ import annotations

import fcntl
import json
import os
from concurrent.futures import Future
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file
from vllm.distributed.kv_transfer.kv_connector.v1.example_hidden_states_connector import (
    ExampleHiddenStatesConnector,
    PendingSave,
    extract_from_kv_cache,
    load_hidden_states,
)

GPU_CONNECTOR = "ExampleHiddenStatesConnector"  # vLLM's own, registered by name


class _Copied:
    """A copy event that has already happened (a CPU clone is done when it returns)."""

    def query(self) -> bool:
        return True


def _write(tensors: dict, filename: str, lock_fd: int | None) -> None:
    try:
        save_file(tensors, filename)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # releases the reader's wait (load_hidden_states takes a shared lock)


class CpuHiddenStatesConnector(ExampleHiddenStatesConnector):
    """vLLM's hidden-states connector with the one CUDA-only step, the copy out of the KV cache, done on the CPU."""

    def _submit_async_write(self, pending: PendingSave) -> None:
        if not self._is_tp_rank_zero:
            return
        assert self._kv_cache is not None
        blocks = torch.tensor(pending.block_ids, dtype=torch.long)
        slots = (
            torch.arange(self._block_size, dtype=torch.long)[None, :] + blocks[:, None] * self._block_size
        ).flatten()
        # cloned now: the request's blocks are freed once get_finished reports the copy done
        states = extract_from_kv_cache(self._kv_cache, slots, pending.token_ids.shape[0]).clone()
        tensors = {"hidden_states": states.contiguous(), "token_ids": pending.token_ids.clone()}
        os.makedirs(os.path.dirname(pending.filename), exist_ok=True)
        lock_fd = self._lock_fds.pop(pending.req_id, None)
        if lock_fd is None and self.use_lock:
            lock_fd = os.open(pending.filename + ".lock", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        future: Future = self._executor.submit(_write, tensors, pending.filename, lock_fd)
        self._req_copy_events[pending.req_id] = _Copied()
        self._req_futures[pending.req_id] = future
        future.add_done_callback(partial(self._on_write_done, pending.req_id))


def serve_arguments(layer_ids: list[int], directory: str | Path, on_gpu: bool) -> list[str]:
    """Extra `vllm serve` arguments that capture ``layer_ids`` of every request into ``directory``."""
    speculative = {
        "method": "extract_hidden_states",
        "num_speculative_tokens": 1,  # the method's only k (vllm/v1/spec_decode/extract_hidden_states.py)
        "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": list(layer_ids)}},
    }
    transfer = {
        "kv_connector": GPU_CONNECTOR if on_gpu else CpuHiddenStatesConnector.__name__,
        "kv_role": "kv_producer",
        "kv_connector_extra_config": {"shared_storage_path": str(directory)},
    }
    if not on_gpu:
        transfer["kv_connector_module_path"] = __name__
    return ["--speculative-config", json.dumps(speculative), "--kv-transfer-config", json.dumps(transfer)]


def read(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden_states [tokens, layers, hidden], token_ids [tokens]) of one request, once its write has finished."""
    data = load_hidden_states(str(path))
    return data["hidden_states"], data["token_ids"]
