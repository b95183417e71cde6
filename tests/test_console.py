"""The console of `spectrain run`: step lines for a person, everything else in one log per step."""

import io
import json

from spectrain.console import MARK, RunConsole


def event(**fields) -> str:
    return "    " + MARK + json.dumps(fields) + "\n"  # as kfp.local streams a task's output: indented


def test_steps_become_one_line_each_and_their_output_goes_to_their_own_log(tmp_path):
    terminal = io.StringIO()
    console = RunConsole(tmp_path / "logs", terminal)
    console.write('\x1b[32mExecuting task\x1b[0m serve-base-model\n{"executorInput": 1}\n')
    console.write(event(event="start", step="serve", label=""))
    console.write("    [vllm] starting\n" + event(event="progress", desc="load", done=1, total=2, unit="x"))
    console.write(event(event="progress", desc="load", done=2, total=2, unit="x"))  # the same bar, moved on
    console.write(event(event="end", step="serve", label="", seconds=61.2, status="ok", note="serving at http://h"))
    console.write(event(event="start", step="train-heads", label="eagle3"))
    console.write("    Traceback (most recent call last):\n    boom\n")
    console.write(event(event="warn", label="train-heads eagle3", text="budget reached"))
    console.write(event(event="end", step="train-heads", label="eagle3", seconds=3, status="failed", error=""))
    console.close()
    shown = terminal.getvalue()
    assert "serve: started" in shown and "serve: done in 1m01s (serving at http://h)" in shown
    assert "warning (train-heads eagle3): budget reached" in shown
    assert "train-heads eagle3: FAILED after 3s" in shown and "| boom" in shown  # the tail of its log
    assert "executorInput" not in shown and "[vllm] starting" not in shown
    logs = tmp_path / "logs"
    assert "[vllm] starting" in (logs / "serve.log").read_text()
    assert "boom" in (logs / "train-heads-eagle3.log").read_text()
    pipeline = (logs / "pipeline.log").read_text()
    assert "executorInput" in pipeline and "Executing task serve-base-model" in pipeline  # colours stripped
    assert '"progress"' not in pipeline  # progress is for the terminal only
    assert "could not show" not in pipeline  # (a bar without a terminal is a disabled tqdm: it has no .desc)
    assert console.failed.keys() == {"train-heads eagle3"}


def test_a_step_error_message_is_shown_as_it_was_written(tmp_path):
    terminal = io.StringIO()
    console = RunConsole(tmp_path / "logs", terminal)
    console.write(event(event="start", step="regenerate", label=""))
    console.write(
        event(
            event="end",
            step="regenerate",
            label="",
            seconds=1,
            status="bad input",
            error="data.jsonl: the server rejected all 2 conversations\n  fix: shorten the prompts",
        )
    )
    console.close()
    assert "  data.jsonl: the server rejected all 2 conversations\n    fix: shorten the prompts" in terminal.getvalue()


def test_verbose_echoes_the_raw_stream_and_still_writes_the_logs(tmp_path):
    terminal = io.StringIO()
    console = RunConsole(tmp_path / "logs", terminal, verbose=True)
    console.write(event(event="start", step="export", label="medusa") + "    raw line\n")
    console.write(event(event="end", step="export", label="medusa", seconds=1, status="ok", note=""))
    console.close()
    assert "raw line" in terminal.getvalue()
    assert "raw line" in (tmp_path / "logs" / "export-medusa.log").read_text()
