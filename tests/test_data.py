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


@pytest.mark.parametrize(
    "record",
    [
        {
            "system": "Be brief.",
            "conversations": [{"from": "User" if r == "user" else "Assistant", "value": t} for r, t in TURNS],
        },
        {
            "system": "Be brief.",
            "conversations": [{"from": "human" if r == "user" else "gpt", "value": t} for r, t in TURNS],
        },
        {"messages": [{"role": "system", "content": "Be brief."}] + [{"role": r, "content": t} for r, t in TURNS]},
    ],
    ids=["daring-anteater", "sharegpt", "openai-messages"],
)
def test_each_format_reads_to_the_same_conversation(tmp_path, record):
    (conversation,) = read_conversations(write(tmp_path, [record]))
    assert conversation.system == "Be brief."
    assert [(t["role"], t["content"]) for t in conversation.turns] == TURNS
    assert conversation.prompts == ["Hi there", "Name a colour."]
    assert conversation.conversation_id.startswith("sha1-")  # stable id from the prompts


def test_content_ids_are_stable_and_explicit_ids_win(tmp_path):
    record = {"conversations": [{"from": "User", "value": "Q"}, {"from": "Assistant", "value": "A"}]}
    first = next(read_conversations(write(tmp_path, [record], "a.jsonl")))
    again = next(
        read_conversations(
            write(
                tmp_path,
                [
                    dict(
                        record,
                        conversations=[
                            {"from": "User", "value": "Q"},
                            {"from": "Assistant", "value": "a different reply"},
                        ],
                    )
                ],
                "b.jsonl",
            )
        )
    )
    named = next(read_conversations(write(tmp_path, [dict(record, id="conv-7")], "c.jsonl")))
    assert first.conversation_id == again.conversation_id
    assert named.conversation_id == "conv-7"


BAD_LINES = {
    "not valid JSON": '{"conversations": [',
    "unknown role 'narrator'": {"conversations": [{"from": "narrator", "value": "Once"}]},
    "does not start with a user turn": {
        "conversations": [{"from": "Assistant", "value": "Hi"}, {"from": "User", "value": "Hello"}]
    },
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


RECORD = {"conversations": [{"from": "User" if r == "user" else "Assistant", "value": t} for r, t in TURNS]}


def test_json_parquet_and_a_folder_of_them_read_alike(tmp_path):
    import pyarrow
    import pyarrow.parquet

    folder = tmp_path / "data"
    (folder / "more").mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps([RECORD, dict(RECORD, id="two")]))
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist([dict(RECORD, id="three")]), folder / "more" / "b.parquet")
    (folder / "c.jsonl").write_text(json.dumps(dict(RECORD, id="four")) + "\n")
    (folder / "README.md").write_text("not data")
    conversations = list(read_conversations(str(folder)))
    assert [c.source for c in conversations] == [
        f"{folder}/a.json:1",
        f"{folder}/a.json:2",
        f"{folder}/c.jsonl:1",
        f"{folder}/more/b.parquet:1",
    ]
    assert all([(t["role"], t["content"]) for t in c.turns] == TURNS for c in conversations)
    assert [c.conversation_id for c in conversations][1:] == ["two", "four", "three"]


def test_bad_records_in_json_and_parquet_name_the_record(tmp_path):
    import pyarrow
    import pyarrow.parquet

    (tmp_path / "a.json").write_text(json.dumps([RECORD, {"messages": []}]))
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist([{"text": "no turns"}]), tmp_path / "b.parquet")
    skipped: list[SkippedLine] = []
    assert len(list(read_conversations(str(tmp_path), skipped=skipped))) == 1
    assert [str(s) for s in skipped] == [
        f"{tmp_path}/a.json record 2: the conversation is empty",
        f"{tmp_path}/b.parquet record 1: no 'conversations' (Daring-Anteater/ShareGPT), 'messages' (OpenAI) or "
        "'turns' (MT-Bench) field",
    ]
    (tmp_path / "bad.json").write_text('{"data": 3}')
    with pytest.raises(SpectrainError, match="must be a list of records"):
        list(read_conversations(str(tmp_path / "bad.json")))


def test_a_forced_format_reads_only_its_field(tmp_path):
    openai = {"messages": [{"role": r, "content": t} for r, t in TURNS]}
    path = write(tmp_path, [RECORD, openai])
    skipped: list[SkippedLine] = []
    (only,) = read_conversations(path, skipped=skipped, data_format="openai")
    assert only.source.endswith(":2") and "no 'messages' field" in skipped[0].reason
    with pytest.raises(SpectrainError, match="unknown data format"):
        list(read_conversations(path, data_format="alpaca"))


def test_an_empty_folder_says_what_it_wanted(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SpectrainError, match="no .jsonl/.json/.parquet file"):
        list(read_conversations(str(tmp_path)))


def test_s3_files_and_prefixes_are_read_through_boto3(s3_endpoint, tmp_path, monkeypatch):
    """Against moto's S3 server over HTTP: a prefix (new files picked up on the next read) and a single key."""
    import boto3

    from spectrain.data import dataset_fingerprint, input_files

    monkeypatch.setenv("SPECTRAIN_DATA_CACHE", str(tmp_path / "cache"))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="chats")
    s3.put_object(Bucket="chats", Key="daily/2026-11-25.jsonl", Body=json.dumps(dict(RECORD, id="a")) + "\n")
    assert [c.conversation_id for c in read_conversations("s3://chats/daily/")] == ["a"]
    before = dataset_fingerprint("s3://chats/daily/")

    s3.put_object(Bucket="chats", Key="daily/2026-11-26.jsonl", Body=json.dumps(dict(RECORD, id="b")) + "\n")
    conversations = list(read_conversations("s3://chats/daily/"))
    assert [c.conversation_id for c in conversations] == ["a", "b"]
    assert conversations[1].source == "s3://chats/daily/2026-11-26.jsonl:1"
    assert [origin for origin, _ in input_files("s3://chats/daily/")] == [
        "s3://chats/daily/2026-11-25.jsonl",
        "s3://chats/daily/2026-11-26.jsonl",
    ]
    assert dataset_fingerprint("s3://chats/daily/") != before

    (single,) = read_conversations("s3://chats/daily/2026-11-26.jsonl")
    assert single.conversation_id == "b"
    with pytest.raises(SpectrainError, match="nothing at s3://chats/nope/"):
        list(read_conversations("s3://chats/nope/"))
    with pytest.raises(SpectrainError, match="cannot list"):
        list(read_conversations("s3://no-such-bucket/x.jsonl"))


def test_a_file_named_explicitly_is_read_whatever_its_name(tmp_path):
    """KFP artifact paths have no suffix: an explicit file is jsonl unless it says .json/.parquet."""
    path = tmp_path / "regenerated_conversations"
    path.write_text(json.dumps(RECORD) + "\n" + "{broken\n")
    skipped: list[SkippedLine] = []
    assert len(list(read_conversations(str(path), skipped=skipped))) == 1
    assert str(skipped[0]).startswith(f"{path}:2: not valid JSON")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "regenerated_conversations").write_text(json.dumps(RECORD) + "\n")
    with pytest.raises(SpectrainError, match="no .jsonl/.json/.parquet file"):  # in a folder, names decide
        list(read_conversations(str(tmp_path / "folder")))


def test_mt_bench_question_files_read_as_user_turns_to_answer(tmp_path):
    """EAGLE's and MT-Bench's question.jsonl (e.g. vicuna_bench_question.jsonl): user turns only."""
    path = write(
        tmp_path,
        [
            {"question_id": 7, "category": "math", "turns": ["Hi there", "Name a colour."]},
            {"question_id": 8, "turns": "not a list"},
        ],
    )
    skipped = []
    (conversation,) = read_conversations(path, skipped=skipped)
    assert conversation.prompts == ["Hi there", "Name a colour."] and conversation.category == "math"
    assert conversation.conversation_id == "7"
    assert [t["content"] for t in conversation.turns if t["role"] == "assistant"] == ["", ""]
    assert skipped[0].line == 2 and "'turns' is not a list of strings" in skipped[0].reason
