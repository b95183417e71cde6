"""The frozen base sharded with FSDP2: modelopt's draft trains on it for real, on two gloo ranks, as one process would.

On GPUs the train step shards through the HF Trainer's FSDP2 plugin (accelerate). accelerate enables FSDP only
for multi-GPU runs (accelerate/state.py: the FSDP branch is under the MULTI_GPU-like distributed types, MULTI_CPU
is not among them), so here the same sharding is applied with torch's own ``fully_shard`` by decoder layer, as
accelerate's FSDP2 auto-wrap does, and everything spectrain owns runs on it: modelopt's EAGLE-3 forward and
backward over a sharded, frozen base; the draft gathered whole from its shards (what the artifact and every
resumable checkpoint hold); whole tensors loaded back into the shards (what a resume does); the frozen-base
checksum over each rank's shards.
"""

import sys

import pytest
import torch
from safetensors.torch import load_file

from spectrain.components.train_heads.config import TrainHeadsConfig
from spectrain.components.train_heads.draft import convert, draft_module
from spectrain import devices
from spectrain.models import load_base, resolve_base_model
from tests.support.gloo import run_ranks

STEPS, TOKENS = 2, 32
SETTINGS = dict(data="x", mode="eagle3", draft_vocab_size=0, max_length=TOKENS)

WORKER = """
import sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from safetensors.torch import save_file
from spectrain.components.train_heads.config import TrainHeadsConfig
from spectrain.components.train_heads.draft import convert, draft_module
from spectrain.components.train_heads.trainer import base_checksum, load_draft
from spectrain import devices
from spectrain.draft_checkpoint import draft_state_dict
from spectrain.models import load_base

dist.init_process_group("gloo")
rank = dist.get_rank()
base_dir, batches, output = sys.argv[1], torch.load(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = load_base(base_dir, devices.cpu())
convert(model, TrainHeadsConfig(**{settings}))
draft_module(model, "eagle3").float()
layers = tuple(type(m) for m in model.modules() if type(m).__name__ in model._no_split_modules)
for module in list(model.modules()):
    if isinstance(module, layers):
        fully_shard(module)
fully_shard(model)
assert all(hasattr(p, "full_tensor") for p in model.parameters()), "not every parameter is a shard"
before = base_checksum(model)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
for step in range(batches.shape[0]):
    ids = batches[step, rank : rank + 1]  # each rank its own row: data parallel
    model(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=torch.ones_like(ids)).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
assert torch.equal(before, base_checksum(model)), "the base moved"
draft = draft_state_dict(model)  # both ranks: the whole draft, gathered
save_file({{name: tensor.contiguous() for name, tensor in draft.items()}}, f"{{output}}.{{rank}}")
missing, unexpected = load_draft(model, {{name: torch.zeros_like(t) for name, t in draft.items()}})
assert not unexpected and all(float(t.full_tensor().abs().sum()) == 0 for n, t in model.state_dict().items()
                              if n.startswith("eagle_module") and t.is_floating_point()), "not loaded into the shards"
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_draft_trained_over_a_sharded_base_equals_one_trained_by_one_process_on_both_batches(tmp_path):
    base_dir = resolve_base_model("embedded")
    batches = torch.randint(0, 1000, (STEPS, 2, TOKENS), generator=torch.Generator().manual_seed(1))
    torch.save(batches, tmp_path / "batches.pt")
    (tmp_path / "worker.py").write_text(WORKER.format(settings=SETTINGS))
    completed = run_ranks(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(tmp_path / "worker.py"),
            base_dir,
            str(tmp_path / "batches.pt"),
            str(tmp_path / "draft"),
        ],
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rank0, rank1 = (load_file(str(tmp_path / f"draft.{rank}")) for rank in (0, 1))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[n], rank1[n]) for n in rank0)

    # one process, both rows in each batch: FSDP2 averages the two ranks' gradients, so the same steps
    torch.manual_seed(0)
    model = load_base(base_dir, devices.cpu())
    convert(model, TrainHeadsConfig(**SETTINGS))
    draft_module(model, "eagle3").float()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    initial = {n: t.clone() for n, t in model.state_dict().items() if n in rank0}
    for step in range(STEPS):
        ids = batches[step]
        model(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=torch.ones_like(ids)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    reference = model.state_dict()
    moved = [n for n in rank0 if rank0[n].is_floating_point() and not torch.equal(rank0[n], initial[n])]
    assert moved, "the sharded run left the draft as it started"
    for name in moved:  # the same update, up to float32 summation order (which Adam's first steps magnify a little)
        update = reference[name] - initial[name]
        apart = torch.linalg.vector_norm(rank0[name] - reference[name]) / torch.linalg.vector_norm(update)
        assert apart < 1e-3, f"{name}: the sharded update is {float(apart):.1%} away from one process's"
