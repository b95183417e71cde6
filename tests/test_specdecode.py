"""vLLM's spec-decode counters: parsing its /metrics text and τ over a window across restarts and replicas."""

import pytest

from spectrain.specdecode import Counters, increase, parse

METRICS = """\
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="base"} 40.0
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="base"} 120.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="base"} 30.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="base",position="0"} 20.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="base",position="1"} 8.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="base",position="2"} 2.0
vllm:spec_decode_num_drafts_created{engine="0",model_name="base"} 1.7e9
vllm:num_requests_running{engine="0",model_name="base"} 0.0
"""


def counters(drafts, accepted, per_position):
    return Counters(drafts, 3 * drafts, accepted, dict(enumerate(per_position)))


def test_counters_give_tokens_per_base_step():
    parsed = parse(METRICS)
    assert (parsed.drafts, parsed.draft_tokens, parsed.accepted) == (40, 120, 30)  # `_created` is not a count
    assert parsed.acceptance_length == pytest.approx(1 + 30 / 40)
    assert parsed.acceptance_rate_per_position == pytest.approx([0.5, 0.2, 0.05])
    assert parse("").drafts == 0 and parse("").acceptance_length == 1.0  # no traffic: nothing to divide


def test_engines_of_one_server_are_summed():
    second_engine = METRICS.replace('engine="0"', 'engine="1"').replace("# ", "#x ")
    parsed = parse(METRICS + second_engine)
    assert (parsed.drafts, parsed.accepted, parsed.per_position[1]) == (80, 60, 16)


def test_a_window_counts_only_what_happened_in_it():
    window = increase([counters(100, 50, [30, 20]), counters(150, 60, [36, 24]), counters(250, 130, [80, 50])])
    assert (window.drafts, window.accepted) == (150, 80)
    assert window.acceptance_length == pytest.approx(1 + 80 / 150)
    assert window.acceptance_rate_per_position == pytest.approx([50 / 150, 30 / 150])


def test_a_restart_is_a_reset_not_negative_traffic():
    before, restarted, later = counters(1000, 900, [600, 300]), counters(20, 5, [4, 1]), counters(60, 15, [11, 4])
    window = increase([before, restarted, later])
    assert (window.drafts, window.accepted) == (60, 15)  # 20 counted after the restart, then 40 more
    assert window.acceptance_length == pytest.approx(1.25)


def test_replicas_add_up_and_a_window_without_traffic_has_no_drafts():
    first = increase([counters(10, 5, [5]), counters(30, 15, [15])])
    second = increase([counters(0, 0, [0]), counters(20, 2, [2])])
    assert (first + second).acceptance_length == pytest.approx(1 + 12 / 40)
    idle = increase([counters(30, 15, [15]), counters(30, 15, [15])])
    assert idle.drafts == 0 and increase([counters(5, 1, [1])]).drafts == 0
