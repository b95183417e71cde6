"""Regenerate step logic: an async OpenAI-compatible client with bounded concurrency, resumable by conversation id."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

from spectrain.components.regenerate.checkpoint import S3Checkpoint
from spectrain.components.regenerate.config import RegenerateConfig
from spectrain.console import Progress, warn
from spectrain.data import Conversation, SkippedLine, append_jsonl, content_id, read_conversations
from spectrain.errors import SpectrainError


def finished_ids(output: Path) -> set[str]:
    """Ids already written by an earlier, possibly interrupted, run of the same output."""
    skipped: list[SkippedLine] = []
    if not output.exists():
        return set()
    done = {c.conversation_id for c in read_conversations(str(output), skipped=skipped)}
    for line in skipped:
        print(f"[regenerate] ignoring {line} (it will be redone)", flush=True)
    if skipped:
        _drop_broken_lines(output)
    return done


def _drop_broken_lines(output: Path) -> None:
    kept = []
    for line in output.read_text(encoding="utf-8").splitlines():
        try:
            json.loads(line)
            kept.append(line)
        except json.JSONDecodeError:
            continue
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, output)


async def regenerate_conversation(
    client, model: str, conversation: Conversation, config: RegenerateConfig
) -> tuple[dict, int]:
    """Replace each assistant turn with the model's reply to the conversation so far: (record, output tokens)."""
    messages = []
    system = config.system_prompt or (conversation.system if config.keep_system_prompt else "")
    if system:
        messages.append({"role": "system", "content": system})
    extra_body = {
        **config.request_options,
        **({"chat_template_kwargs": config.chat_template_kwargs} if config.chat_template_kwargs else {}),
    }
    turns, finish_reasons, output_tokens = [], [], 0
    for prompt in conversation.prompts:
        messages.append({"role": "user", "content": prompt})
        response = await client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            extra_body=extra_body or None,
        )
        choice = response.choices[0]
        reply = choice.message.content or ""
        messages.append({"role": "assistant", "content": reply})
        turns += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        finish_reasons.append(choice.finish_reason)
        output_tokens += response.usage.completion_tokens if response.usage else 0
    regenerated = Conversation(conversation.conversation_id, turns, system, conversation.category)
    record = regenerated.to_record()
    record["finish_reasons"] = finish_reasons
    record["truncated"] = "length" in finish_reasons
    return record, output_tokens


SYNTHESIZED = "synthesized"  # the category of conversations whose prompt the base wrote


def synthesized(config: RegenerateConfig) -> list[Conversation]:
    """Placeholders for the ``synthesize`` prompts: ids fixed by seed and index, so a re-run resumes them."""
    return [
        Conversation(f"synthesized-{config.seed}-{index:06d}", [], "", SYNTHESIZED)
        for index in range(config.synthesize)
    ]


async def user_header(client, model: str) -> list[int]:
    """Token ids of the served model's chat template up to where a user's message starts (vLLM's /tokenize).

    Two one-message chats differing only in the message share exactly that prefix; it includes the
    template's default system prompt, as the regenerated conversations do.
    """
    root = str(client.base_url).rstrip("/").removesuffix("/v1")
    renderings = []
    for text in ("Hello", "Why"):
        response = await client.post(
            f"{root}/tokenize",
            cast_to=object,
            body={"model": model, "messages": [{"role": "user", "content": text}], "add_generation_prompt": False},
        )
        renderings.append(response["tokens"])
    header = []
    for first, second in zip(*renderings):
        if first != second:
            break
        header.append(first)
    return header


async def synthesize_prompt(
    client, model: str, header: list[int], conversation: Conversation, config: RegenerateConfig
) -> Conversation | None:
    """The base's own user message, sampled after ``header``; None when it runs past the limit or is empty."""
    index = int(conversation.conversation_id.rsplit("-", 1)[1])
    response = await client.completions.create(
        model=model,
        prompt=header,
        max_tokens=config.synthesis_max_tokens,
        temperature=config.synthesis_temperature,
        seed=config.seed * 1_000_003 + index,
    )
    choice = response.choices[0]
    text = choice.text.strip()
    if choice.finish_reason != "stop" or not text:
        return None
    return Conversation(
        conversation.conversation_id,
        [{"role": "user", "content": text}, {"role": "assistant", "content": ""}],
        "",
        SYNTHESIZED,
    )


async def _served_model(client, config: RegenerateConfig) -> str:
    """The model to request, asking the first endpoint; a refused API key stops the step before any request."""
    from openai import APIConnectionError, AuthenticationError, PermissionDeniedError

    try:
        models = await client.models.list()
    except (AuthenticationError, PermissionDeniedError) as exc:
        raise SpectrainError(
            f"{client.base_url} refused the API key (HTTP {exc.status_code})",
            where="regenerate.api_key (the VLLM_API_KEY variable wins over it)",
            fix="use the key the server was started with (its --api-key or VLLM_API_KEY)",
        ) from None
    except APIConnectionError as exc:
        if config.model:  # each conversation then records its own failure, and max_failure_ratio decides
            return config.model
        loopback = client.base_url.host in ("127.0.0.1", "localhost", "::1")
        raise SpectrainError(
            f"cannot reach {client.base_url} ({exc})"
            + ("; a loopback address only reaches a server in this same pod or machine" if loopback else ""),
            where="regenerate.endpoint",
            fix="serve with serve_mode 'cluster' (a vLLM Deployment + Service) when steps run in pods of their own"
            if loopback
            else "start the server or correct the URL (it ends in /v1)",
        ) from None
    return config.model or models.data[0].id


async def _regenerate_all(
    config: RegenerateConfig, todo: list[Conversation], output: Path, errors: Path, checkpoint: S3Checkpoint | None
) -> dict:
    from openai import AsyncOpenAI, BadRequestError

    api_key = os.environ.get("VLLM_API_KEY") or config.api_key
    clients = [
        AsyncOpenAI(
            base_url=url.strip(), api_key=api_key, timeout=config.request_timeout_s, max_retries=config.max_retries
        )
        for url in config.endpoint.split(",")
        if url.strip()
    ]
    model = await _served_model(clients[0], config)
    header = await user_header(clients[0], model) if any(c.category == SYNTHESIZED for c in todo) else []
    counts = {"done": 0, "truncated": 0, "failed": 0, "rejected": 0, "discarded": 0, "output_tokens": 0}
    semaphore = asyncio.Semaphore(config.concurrency)
    progress = Progress(len(todo), "regenerate", "conv")

    def report(kind: str, conversation: Conversation, reason: str) -> None:
        counts[kind] += 1
        with open(errors, "a", encoding="utf-8") as handle:
            append_jsonl(
                handle, {"conversation_id": conversation.conversation_id, "source": conversation.source, kind: reason}
            )

    async def one(index: int, conversation: Conversation) -> None:
        async with semaphore:
            try:
                client = clients[index % len(clients)]  # data parallel over replicas
                if conversation.category == SYNTHESIZED and not conversation.turns:
                    synthesized = await synthesize_prompt(client, model, header, conversation, config)
                    if synthesized is None:
                        counts["discarded"] += 1
                        progress.update(1)
                        return
                    conversation = synthesized
                record, output_tokens = await regenerate_conversation(client, model, conversation, config)
            except BadRequestError as exc:  # the input's fault (e.g. longer than the context): not retried
                warn(f"{conversation.source}: rejected by the server: {exc.message}")
                report("rejected", conversation, exc.message)
            except Exception as exc:  # after the client's own retries: record it and go on
                report("failed", conversation, f"{type(exc).__name__}: {exc}")
            else:
                counts["done"] += 1
                counts["truncated"] += record["truncated"]
                counts["output_tokens"] += output_tokens
                with open(output, "a", encoding="utf-8") as handle:
                    append_jsonl(handle, record)
                if checkpoint and checkpoint.add(record):
                    await asyncio.to_thread(checkpoint.push)
            progress.update(1)

    try:
        await asyncio.gather(*(one(i, c) for i, c in enumerate(todo)))
    finally:
        progress.close()
        for client in clients:
            await client.close()
    return counts


def select(
    conversations: list[Conversation], config: RegenerateConfig
) -> tuple[list[Conversation], list[Conversation]]:
    """Dedupe identical prompts, then draw the random sample, then hold out the last ``heldout``, then take the
    first N of the rest: (to regenerate, held out)."""
    if config.dedupe:
        seen, unique = set(), []
        for conversation in conversations:
            key = content_id(conversation.system, conversation.turns)
            if key not in seen:
                seen.add(key)
                unique.append(conversation)
        if len(unique) < len(conversations):
            print(
                f"[regenerate] dropped {len(conversations) - len(unique)} conversations with repeated prompts",
                flush=True,
            )
        conversations = unique
    if config.sample and config.sample < len(conversations):
        conversations = random.Random(config.seed).sample(conversations, config.sample)
    held: list[Conversation] = []
    if config.heldout:
        if config.heldout >= len(conversations):
            raise SpectrainError(
                f"regenerate.heldout = {config.heldout} holds out every conversation: the dataset has "
                f"{len(conversations)} usable ones",
                where=config.dataset,
                fix="hold out fewer (a tenth of the data, say), or pass a larger dataset",
            )
        conversations, held = conversations[: -config.heldout], conversations[-config.heldout :]
    return (conversations[: config.limit] if config.limit else conversations), held


def write_heldout(held: list[Conversation], config: RegenerateConfig) -> Path | None:
    """The held-out conversations as read (their prompts: evaluate has the base answer them), or nothing to do."""
    output = Path(config.output)
    path = Path(config.heldout_output) if config.heldout_output else output.with_name(output.stem + ".heldout.jsonl")
    if not held and not config.heldout_output:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(c.to_record(), ensure_ascii=False) + "\n" for c in held), encoding="utf-8")
    if held:
        print(f"[regenerate] held out {len(held)} conversations for evaluation: {path}", flush=True)
    return path


def run(config: RegenerateConfig) -> dict:
    started = time.monotonic()
    skipped: list[SkippedLine] = []
    conversations = list(read_conversations(config.dataset, skipped=skipped, data_format=config.format))
    inputs = sorted({c.source.rsplit(":", 1)[0] for c in conversations} | {s.path for s in skipped})
    for line in skipped:
        print(f"[regenerate] skipped {line}", flush=True)
    if skipped:
        warn(
            f"{len(skipped)} input record(s) skipped, first {skipped[0].where}: {skipped[0].reason} "
            "(every one is in this step's log)"
        )
    conversations, held = select(conversations, config)
    if not conversations:
        raise SpectrainError("no usable conversations", where=config.dataset, fix="check the file's format")
    heldout = write_heldout(held, config)
    conversations += synthesized(config)
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    errors = output.with_name(output.stem + ".errors.jsonl")
    done = finished_ids(output)
    checkpoint = S3Checkpoint(config.checkpoint_uri, config.checkpoint_interval_s) if config.checkpoint_uri else None
    if checkpoint:
        restored = checkpoint.restore(output, done)
        print(f"[regenerate] {restored} finished conversations restored from {config.checkpoint_uri}", flush=True)
    todo = [c for c in conversations if c.conversation_id not in done]
    print(
        f"[regenerate] {len(conversations)} conversations, {len(conversations) - len(todo)} already done, "
        f"{len(todo)} to go, concurrency {config.concurrency}",
        flush=True,
    )
    counts = {"done": 0, "truncated": 0, "failed": 0, "rejected": 0, "discarded": 0, "output_tokens": 0}
    try:
        if todo:
            counts = asyncio.run(_regenerate_all(config, todo, output, errors, checkpoint))
    finally:
        if checkpoint:  # what finished goes up even when the step fails; only a clean finish must upload
            checkpoint.push(final=sys.exc_info()[0] is None)
    seconds = time.monotonic() - started
    summary = {
        **counts,
        "output_tokens_per_s": counts["output_tokens"] / seconds,
        "resumed": len(conversations) - len(todo),
        "skipped_input_lines": len(skipped),
        "total": len(conversations),
        "heldout": len(held),
        "heldout_output": str(heldout) if heldout else None,
        "output": str(output),
        "inputs": inputs,
        "seconds": seconds,
        "checkpoint": checkpoint.summary() if checkpoint else None,
    }
    print(
        f"[regenerate] done {counts['done']}, truncated {counts['truncated']}, failed {counts['failed']}, "
        f"rejected {counts['rejected']}, discarded synthesized prompts {counts['discarded']}, "
        f"skipped input lines {len(skipped)} in {seconds:.0f} s",
        flush=True,
    )
    if todo and counts["failed"] / len(todo) > config.max_failure_ratio:
        raise SpectrainError(
            f"{counts['failed']} of {len(todo)} conversations failed (over the "
            f"{config.max_failure_ratio:.0%} limit of regenerate.max_failure_ratio); reasons, with "
            f"each conversation's file:line, are in {errors}",
            where=config.dataset,
            fix="check the server and re-run: finished conversations are kept and skipped",
        )
    if todo and counts["done"] + len(conversations) - len(todo) == 0:
        raise SpectrainError(
            f"the server rejected all {counts['rejected']} conversations, so there is nothing to "
            f"train on; reasons, with each conversation's file:line, are in {errors}",
            where=config.dataset,
            fix="shorten the prompts or raise the server's max_model_len (a pipeline parameter)",
        )
    return summary
