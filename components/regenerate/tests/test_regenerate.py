"""Regenerate step against a real vLLM server: multi-turn, resume, crash-safe output, failures counted."""

import json

import pytest

from spectrain.components.regenerate.config import RegenerateConfig
from spectrain.components.regenerate.regenerate import run
from spectrain.errors import SpectrainError

CONVERSATIONS = [
    {
        "id": "single",
        "conversations": [{"from": "User", "value": "Name a fruit."}, {"from": "Assistant", "value": "An apple."}],
    },
    {
        "id": "multi",
        "system": "Answer in one sentence.",
        "conversations": [
            {"from": "User", "value": "What is rain?"},
            {"from": "Assistant", "value": "Water."},
            {"from": "User", "value": "Why does it fall?"},
            {"from": "Assistant", "value": "Gravity."},
        ],
    },
    {"messages": [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "1 2 3"}]},
    {"conversations": [{"from": "narrator", "value": "broken"}]},
]


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "input.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    return str(path)


def records(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


@pytest.mark.slow
def test_every_assistant_turn_is_rewritten_and_a_rerun_resumes(vllm_server, dataset, tmp_path):
    output = tmp_path / "out.jsonl"
    config = RegenerateConfig(
        dataset=dataset,
        output=str(output),
        endpoint=vllm_server["endpoint"],
        api_key="test-key",
        max_tokens=12,
        concurrency=4,
    )
    summary = run(config)
    assert (summary["done"], summary["failed"], summary["skipped_input_lines"]) == (3, 0, 1)
    written = {r["conversation_id"]: r for r in records(output)}
    assert set(written) >= {"single", "multi"} and len(written) == 3
    multi = written["multi"]
    assert [t["from"] for t in multi["conversations"]] == ["User", "Assistant", "User", "Assistant"]
    assert multi["conversations"][2]["value"] == "Why does it fall?"
    assert multi["conversations"][1]["value"] != "Water."  # the model's words, not the dataset's
    assert len(multi["finish_reasons"]) == 2
    assert multi["truncated"] == ("length" in multi["finish_reasons"])
    assert summary["output_tokens"] > 0

    again = run(config)
    assert (again["done"], again["resumed"]) == (0, 3)
    assert len(records(output)) == 3

    # A crash mid-write leaves half a line: the next run drops it and redoes that conversation.
    lines = output.read_text().splitlines()
    output.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    repaired = run(config)
    assert (repaired["done"], repaired["resumed"]) == (1, 2)
    assert sorted(r["conversation_id"] for r in records(output)) == sorted(written)


def test_an_unreachable_server_fails_the_step_and_records_every_conversation(dataset, tmp_path):
    output = tmp_path / "out.jsonl"
    config = RegenerateConfig(
        dataset=dataset,
        output=str(output),
        endpoint="http://127.0.0.1:9/v1",
        model="base",
        max_retries=0,
        request_timeout_s=2,
    )
    with pytest.raises(SpectrainError, match="3 of 3 conversations failed"):
        run(config)
    errors = records(tmp_path / "out.errors.jsonl")
    assert len(errors) == 3 and all("Connection" in e["failed"] for e in errors)
    assert {e["source"].rsplit(":", 1)[1] for e in errors} == {"1", "2", "3"}
    assert not output.exists() or not output.read_text()


def test_selection_dedupes_prompts_then_samples_then_takes_the_first_n(tmp_path):
    from spectrain.components.regenerate.regenerate import select
    from spectrain.data import read_conversations

    rows = [
        {
            "id": f"c{i}",
            "conversations": [{"from": "User", "value": f"question {i % 5}"}, {"from": "Assistant", "value": "answer"}],
        }
        for i in range(10)
    ]
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    conversations = list(read_conversations(str(path)))

    def ids(config) -> tuple[list[str], list[str]]:
        kept, held = select(conversations, config)
        return [c.conversation_id for c in kept], [c.conversation_id for c in held]

    assert ids(RegenerateConfig()) == (["c0", "c1", "c2", "c3", "c4"], [])
    sampled = select(conversations, RegenerateConfig(sample=3, seed=7))
    assert len(sampled[0]) == 3 and sampled == select(conversations, RegenerateConfig(sample=3, seed=7))
    assert ids(RegenerateConfig(dedupe=False, limit=7))[0][-1] == "c6"
    # held out: the last of the deduped (and sampled) data, before the limit; never regenerated
    assert ids(RegenerateConfig(heldout=2, limit=2)) == (["c0", "c1"], ["c3", "c4"])
    with pytest.raises(SpectrainError, match="regenerate.heldout = 5 holds out every conversation: the dataset has 5"):
        select(conversations, RegenerateConfig(heldout=5))


def test_held_out_conversations_are_written_for_evaluate_and_an_asked_file_is_written_even_empty(tmp_path):
    from spectrain.components.regenerate.regenerate import select, write_heldout
    from spectrain.data import read_conversations

    path = tmp_path / "new.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"c{i}",
                    "conversations": [{"from": "User", "value": f"q{i}"}, {"from": "Assistant", "value": "a"}],
                }
            )
            + "\n"
            for i in range(4)
        )
    )
    config = RegenerateConfig(dataset=str(path), heldout=1, output=str(tmp_path / "out" / "regenerated.jsonl"))
    _, held = select(list(read_conversations(str(path))), config)
    written = write_heldout(held, config)
    assert written == tmp_path / "out" / "regenerated.heldout.jsonl"
    assert [c.prompts for c in read_conversations(str(written))] == [["q3"]]  # what evaluate has the base answer
    assert write_heldout([], RegenerateConfig(output=str(tmp_path / "x.jsonl"))) is None  # nothing asked
    asked = RegenerateConfig(output=str(tmp_path / "x.jsonl"), heldout_output=str(tmp_path / "artifact"))
    assert write_heldout([], asked).read_text() == ""  # a pipeline's output artifact exists either way


@pytest.mark.slow
def test_requests_are_spread_over_every_endpoint(vllm_server, dataset, tmp_path):
    """One live replica and one dead one: the dead one's share fails, the live one's share is done."""
    config = RegenerateConfig(
        dataset=dataset,
        output=str(tmp_path / "out.jsonl"),
        api_key="test-key",
        endpoint=f"{vllm_server['endpoint']},http://127.0.0.1:9/v1",
        model="base",
        max_tokens=8,
        max_retries=0,
        request_timeout_s=5,
        max_failure_ratio=1.0,
        system_prompt="Reply in French.",
        chat_template_kwargs={"enable_thinking": False},
    )
    summary = run(config)
    assert (summary["done"], summary["failed"]) == (2, 1)  # conversations 0 and 2 live, 1 dead
    assert all(r["system"] == "Reply in French." for r in records(tmp_path / "out.jsonl"))


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_is_rejected_with_its_line_and_the_run_goes_on(vllm_server, tmp_path):
    path = tmp_path / "long.jsonl"
    too_long = " ".join(["word"] * 3000)  # the test server has max_model_len 1024
    path.write_text(
        json.dumps({"id": "short", "conversations": [{"from": "User", "value": "Say hi."}]})
        + "\n"
        + json.dumps({"id": "long", "conversations": [{"from": "User", "value": too_long}]})
        + "\n"
    )
    output = tmp_path / "out.jsonl"
    summary = run(
        RegenerateConfig(
            dataset=str(path), output=str(output), endpoint=vllm_server["endpoint"], api_key="test-key", max_tokens=8
        )
    )
    assert (summary["done"], summary["rejected"], summary["failed"]) == (1, 1, 0)
    (error,) = records(tmp_path / "out.errors.jsonl")
    assert error["source"] == f"{path}:2" and "context" in error["rejected"].lower()


@pytest.mark.slow
def test_a_wrong_api_key_stops_the_step_before_any_conversation(vllm_server, dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    output = tmp_path / "out.jsonl"
    with pytest.raises(SpectrainError) as error:
        run(RegenerateConfig(dataset=dataset, output=str(output), endpoint=vllm_server["endpoint"], api_key="wrong"))
    assert "refused the API key (HTTP 401)" in error.value.what and "regenerate.api_key" in error.value.where
    assert not output.exists() or not output.read_text()


@pytest.mark.slow
def test_when_the_server_rejects_every_prompt_the_step_fails_naming_the_dataset(vllm_server, tmp_path):
    path = tmp_path / "long.jsonl"
    too_long = " ".join(["word"] * 3000)  # the test server has max_model_len 1024
    path.write_text(
        "".join(
            json.dumps({"id": f"long{i}", "conversations": [{"from": "User", "value": f"{i} {too_long}"}]}) + "\n"
            for i in range(2)
        )
    )
    with pytest.raises(SpectrainError) as error:
        run(
            RegenerateConfig(
                dataset=str(path),
                output=str(tmp_path / "out.jsonl"),
                endpoint=vllm_server["endpoint"],
                api_key="test-key",
                max_tokens=8,
            )
        )
    assert error.value.where == str(path) and "rejected all 2 conversations" in error.value.what
    assert "max_model_len" in error.value.fix


@pytest.mark.slow
def test_synthesized_prompts_are_the_bases_own_and_resume_by_id(vllm_server, dataset, tmp_path):
    output = tmp_path / "out.jsonl"
    config = RegenerateConfig(
        dataset=dataset,
        output=str(output),
        endpoint=vllm_server["endpoint"],
        api_key="test-key",
        max_tokens=12,
        concurrency=4,
        limit=1,
        synthesize=8,
        seed=3,
    )
    summary = run(config)
    # a sampled prompt that runs past synthesis_max_tokens is discarded (~1 in 4 with this base)
    assert summary["done"] + summary["discarded"] == 1 + 8 and summary["done"] >= 1 + 2
    written = {r["conversation_id"]: r for r in records(output)}
    made = {i: r for i, r in written.items() if r.get("category") == "synthesized"}
    assert set(made) <= {f"synthesized-3-{n:06d}" for n in range(8)} and len(made) == summary["done"] - 1
    for record in made.values():
        user, assistant = record["conversations"]
        assert user["from"] == "User" and user["value"].strip() and "<|im_" not in user["value"]
        assert assistant["from"] == "Assistant" and assistant["value"]
    assert len({r["conversations"][0]["value"] for r in made.values()}) > 1  # sampled, not one prompt repeated

    again = run(config)  # finished ones are not asked again; only the discarded ones are tried again
    assert again["resumed"] == len(written) and again["done"] + again["discarded"] == summary["discarded"]
    assert len(records(output)) == len(written) + again["done"]
