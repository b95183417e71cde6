"""The regenerate step's inputs that need its environment's packages: Hugging Face `datasets` ids.

The hub itself cannot be reached here, so the same `hf:` code path is pointed at local dataset
folders (`datasets.load_dataset` on a folder of data files, and a `save_to_disk` folder).
"""

import json

import pytest

from spectrain.components.regenerate.config import RegenerateConfig
from spectrain import config as configs
from spectrain.data import read_conversations
from spectrain.errors import SpectrainError

ROWS = [
    {
        "id": f"c{i}",
        "conversations": [{"from": "User", "value": f"question {i}"}, {"from": "Assistant", "value": "answer"}],
    }
    for i in range(3)
]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def test_an_hf_dataset_folder_of_data_files_reads_with_split(tmp_path):
    folder = tmp_path / "anteater"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "test.jsonl").write_text(json.dumps(dict(ROWS[0], id="held")) + "\n")
    assert [c.conversation_id for c in read_conversations(f"hf:{folder}")] == ["c0", "c1", "c2"]
    (held,) = read_conversations(f"hf:{folder}:test")
    assert held.conversation_id == "held" and held.source == f"hf:{folder}:test:1"


def test_a_save_to_disk_dataset_reads_and_bad_rows_are_named(tmp_path):
    import datasets

    rows = ROWS + [{"id": "bad", "conversations": [{"from": "Assistant", "value": "I start"}]}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    skipped = []
    conversations = list(read_conversations(f"hf:{tmp_path / 'saved'}", skipped=skipped))
    assert [c.conversation_id for c in conversations] == ["c0", "c1", "c2"]
    assert str(skipped[0]) == f"hf:{tmp_path / 'saved'} record 4: the conversation does not start with a user turn"


def test_an_unknown_hub_id_is_a_clear_error():
    with pytest.raises(SpectrainError, match="cannot load the Hugging Face dataset 'nobody/nothing'"):
        list(read_conversations("hf:nobody/nothing"))


def test_the_format_option_is_checked():
    with pytest.raises(SpectrainError, match="regenerate.format = 'alpaca' is not allowed: expected one of auto"):
        configs.from_dict(RegenerateConfig, {"format": "alpaca"})
