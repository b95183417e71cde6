"""Chat data: every supported shape reads into one form; bad lines are reported with file, line and reason."""

import json

import pytest

from spectrain.data import SkippedLine, embedded_path, read_conversations
from spectrain.errors import SpectrainError

TURNS = [("user", "Hi there"), ("assistant", "Hello!"), ("user", "Name a colour."), ("assistant", "Blue.")]


def write(tmp_path, records, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize("record", [
    {"system": "Be brief.", "conversations": [{"from": "User" if r == "user" else "Assistant", "value": t}
                                               for r, t in TURNS]},
    {"system": "Be brief.", "conversations": [{"from": "human" if r == "user" else "gpt", "value": t}
                                               for r, t in TURNS]},
    {"messages": [{"role": "system", "content": "Be brief."}] + [{"role": r, "content": t} for r, t in TURNS]},
], ids=["daring-anteater", "sharegpt", "openai-messages"])
def test_each_format_reads_to_the_same_conversation(tmp_path, record):
    (conversation,) = read_conversations(write(tmp_path, [record]))
    assert conversation.system == "Be brief."
    assert [(t["role"], t["content"]) for t in conversation.turns] == TURNS
    assert conversation.prompts == ["Hi there", "Name a colour."]
    assert conversation.conversation_id.startswith("sha1-")  # stable id from the prompts


def test_content_ids_are_stable_and_explicit_ids_win(tmp_path):
    record = {"conversations": [{"from": "User", "value": "Q"}, {"from": "Assistant", "value": "A"}]}
    first = next(read_conversations(write(tmp_path, [record], "a.jsonl")))
    again = next(read_conversations(write(tmp_path, [dict(record, conversations=[
        {"from": "User", "value": "Q"}, {"from": "Assistant", "value": "a different reply"}])], "b.jsonl")))
    named = next(read_conversations(write(tmp_path, [dict(record, id="conv-7")], "c.jsonl")))
    assert first.conversation_id == again.conversation_id
    assert named.conversation_id == "conv-7"


BAD_LINES = {
    "not valid JSON": '{"conversations": [',
    "unknown role 'narrator'": {"conversations": [{"from": "narrator", "value": "Once"}]},
    "does not start with a user turn": {"conversations": [{"from": "Assistant", "value": "Hi"},
                                                          {"from": "User", "value": "Hello"}]},
    "(user) is empty": {"conversations": [{"from": "User", "value": "  "}, {"from": "Assistant", "value": "?"}]},
    "no 'conversations'": {"text": "plain text"},
    "two user turns in a row": {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
}


def test_malformed_lines_are_skipped_and_reported_with_file_line_and_reason(tmp_path):
    good = {"conversations": [{"from": "User", "value": "Q"}, {"from": "Assistant", "value": "A"}]}
    path = write(tmp_path, [good, *BAD_LINES.values(), good])
    skipped: list[SkippedLine] = []
    conversations = list(read_conversations(path, skipped=skipped))
    assert len(conversations) == 2
    assert [s.line for s in skipped] == list(range(2, 2 + len(BAD_LINES)))
    for reason, line in zip(BAD_LINES, skipped):
        assert reason in line.reason and line.path == path


def test_without_a_skip_list_the_first_bad_line_is_a_clear_error(tmp_path):
    path = write(tmp_path, ['{"conversations": ['])
    with pytest.raises(SpectrainError) as error:
        list(read_conversations(path))
    assert f"{path}:1" in str(error.value) and "not valid JSON" in str(error.value)


def test_a_truncated_last_line_is_called_out(tmp_path):
    good = json.dumps({"conversations": [{"from": "User", "value": "Q"}, {"from": "Assistant", "value": "A"}]})
    path = tmp_path / "cut.jsonl"
    path.write_text(good + "\n" + good[:25])
    skipped: list[SkippedLine] = []
    assert len(list(read_conversations(str(path), skipped=skipped))) == 1
    assert "truncated last line" in skipped[0].reason


def test_missing_file_says_what_to_pass():
    with pytest.raises(SpectrainError, match="no such file"):
        list(read_conversations("/nonexistent/data.jsonl"))


def test_the_shipped_prompt_set_is_varied_multi_turn_and_split():
    train = list(read_conversations("embedded", "train"))
    heldout = list(read_conversations("embedded", "heldout"))
    assert len(train) + len(heldout) >= 200 and len(heldout) >= 30
    assert sum(len(c.prompts) > 1 for c in train) >= 20
    assert len({c.category for c in train}) >= 10
    train_prompts = {p for c in train for p in c.prompts}
    assert not train_prompts & {p for c in heldout for p in c.prompts}
    assert embedded_path("train").name == "train.jsonl"
