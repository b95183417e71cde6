"""Training items for the draft heads: from tokenized conversations (online) or a hidden-state cache."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from spectrain.components.train_heads.hidden_cache import read_manifest

IGNORE = -100


class ConversationDataset(torch.utils.data.Dataset):
    """Fixed-length examples: modelopt 0.47 caches its TTT masks by step, not by shape."""

    def __init__(self, examples: list[dict], max_length: int, pad_id: int, mode: str):
        self.examples, self.max_length, self.pad_id, self.mode = examples, max_length, pad_id, mode

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        length = len(example["input_ids"])
        pad = self.max_length - length
        input_ids = torch.tensor(list(example["input_ids"]) + [self.pad_id] * pad)
        loss_mask = torch.tensor(list(example["loss_mask"]) + [0] * pad)
        item = {"input_ids": input_ids, "attention_mask": torch.tensor([1] * length + [0] * pad)}
        if self.mode == "medusa":
            # modelopt's Medusa loss shifts labels once more per head, so labels[t] must already be
            # token t+1: head h then learns token t+2+h from position t, as vLLM's proposer uses it.
            labels = torch.full_like(input_ids, IGNORE)
            labels[:-1] = torch.where(loss_mask[1:].bool(), input_ids[1:], IGNORE)
            item["labels"] = labels
        else:
            item["loss_mask"] = loss_mask
        return item


class CachedDataset(ConversationDataset):
    """The same items plus the base model's cached outputs, in the form the offline forwards take.

    EAGLE: ``base_model_outputs`` with ``base_model_hidden_states`` (and ``aux_hidden_states``,
    ``base_model_logits``),
    read by modelopt's ``eagle_offline`` model. Medusa: ``base_hidden_states``, read by
    :class:`~components.train_heads.hidden_cache.CachedBaseDecoder` standing in for the base decoder.
    """

    def __init__(self, directory: Path, max_length: int, pad_id: int, mode: str, dtype=torch.float32):
        manifest = read_manifest(directory)
        if manifest is None:
            raise FileNotFoundError(f"no complete hidden-state cache in {directory}")
        self.shards = [load_file(str(directory / shard["file"])) for shard in manifest["shards"]]
        self.rows = [
            (s, int(shard["offsets"][i]), int(shard["offsets"][i + 1]))
            for s, shard in enumerate(self.shards)
            for i in range(len(shard["offsets"]) - 1)
        ]
        examples = [
            {
                "input_ids": self.shards[s]["input_ids"][a:b].tolist(),
                "loss_mask": self.shards[s]["loss_mask"][a:b].tolist(),
            }
            for s, a, b in self.rows
        ]
        super().__init__(examples, max_length, pad_id, mode)
        self.dtype = dtype

    def _padded(self, name: str, index: int) -> torch.Tensor:
        shard, start, end = self.rows[index]
        tensor = self.shards[shard][name][start:end].to(self.dtype)
        return torch.cat([tensor, tensor.new_zeros(self.max_length - tensor.shape[0], tensor.shape[1])])

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        if self.mode == "medusa":
            item["base_hidden_states"] = self._padded("hidden", index)
        else:
            outputs = {"base_model_hidden_states": self._padded("hidden", index)}
            stored = self.shards[self.rows[index][0]]
            if "aux" in stored:
                outputs["aux_hidden_states"] = self._padded("aux", index)
            if "logits" in stored:  # draft-vocabulary columns only; see train.offline_training_model
                outputs["base_model_logits"] = self._padded("logits", index)
            item["base_model_outputs"] = outputs
        return item
