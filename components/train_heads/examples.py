"""Conversations into training examples: tokenised with the loss on the assistant's tokens, then packed."""

from __future__ import annotations


from spectrain.components.train_heads.config import TrainHeadsConfig
from spectrain.data import SkippedLine, read_conversations
from spectrain.errors import SpectrainError


def tokenize_conversation(tokenizer, system: str, turns: list[dict], max_length: int) -> dict[str, list[int]]:
    """Token ids of the chat-templated conversation and a mask of the assistant replies' tokens.

    Each assistant reply (and its end-of-turn token) is located by rendering the template up to
    the reply's generation prompt, so the mask follows whatever chat template the model has.
    """
    messages = ([{"role": "system", "content": system}] if system else []) + turns
    ids: list[int] = []
    mask: list[int] = []
    rendered = ""
    for end in range(len(messages)):
        if messages[end]["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:end], tokenize=False, add_generation_prompt=True)
            piece = prompt[len(rendered) :]
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
            mask += [0] * (len(ids) - len(mask))
            rendered = prompt
        full = tokenizer.apply_chat_template(messages[: end + 1], tokenize=False)
        piece = full[len(rendered) :]
        new = tokenizer(piece, add_special_tokens=False)["input_ids"]
        ids += new
        mask += [int(messages[end]["role"] == "assistant")] * len(new)
        rendered = full
    return {"input_ids": ids[:max_length], "loss_mask": mask[:max_length]}


def load_examples(config: TrainHeadsConfig, tokenizer) -> tuple[list[dict], list[SkippedLine]]:
    """Tokenized conversations of ``data`` then ``extra_data``, each with the mask the loss covers."""
    skipped: list[SkippedLine] = []
    examples = []
    for source in filter(None, (config.data, config.extra_data)):
        for conversation in read_conversations(source, skipped=skipped):
            if not any(t["role"] == "assistant" and t["content"] for t in conversation.turns):
                continue
            example = tokenize_conversation(tokenizer, conversation.system, conversation.turns, config.max_length)
            if sum(example["loss_mask"]) > 0:
                if config.loss_on == "all":
                    example["loss_mask"] = [1] * len(example["input_ids"])
                examples.append(example)
    for line in skipped:
        print(f"[train] skipped {line}", flush=True)
    if not examples:
        raise SpectrainError(
            "no conversation with an assistant reply inside max_length",
            where=config.data,
            fix="check the regenerated data, or raise max_length",
        )
    return examples, skipped


def pack_examples(examples: list[dict], max_length: int) -> list[dict]:
    """Whole conversations packed into rows of at most ``max_length`` tokens (first-fit decreasing).

    Deterministic: rows come out in the order they were opened, each holding its conversations
    longest first, so the same data always packs the same way (the hidden-state cache key relies on it).
    """
    rows: list[dict] = []
    for example in sorted(examples, key=lambda e: -len(e["input_ids"])):
        room = next((row for row in rows if len(row["input_ids"]) + len(example["input_ids"]) <= max_length), None)
        if room is None:
            rows.append({"input_ids": list(example["input_ids"]), "loss_mask": list(example["loss_mask"])})
        else:
            room["input_ids"] += example["input_ids"]
            room["loss_mask"] += example["loss_mask"]
    return rows
