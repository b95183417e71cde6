"""What a person sees during `spectrain run`: a line per step start and finish, progress bars, warnings that matter.

Steps print events as marked lines (``@@spectrain {json}``) into their ordinary output; under
`spectrain run` that output reaches the parent through kfp.local, where :class:`RunConsole` takes the
place of sys.stdout: it writes every line to a log file per step (and the whole stream to
pipeline.log) and renders the events for the terminal. Run alone (`spectrain step`), a step shows
plain tqdm bars instead, and its events are one marked line every few seconds.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

MARK = "@@spectrain "
EVENTS_ENV = "SPECTRAIN_EVENTS"  # set by `spectrain run`: steps report progress as events
LABEL_ENV = "SPECTRAIN_STEP_LABEL"  # set by run_step for the step it runs, e.g. "train-heads eagle3"
PROGRESS_INTERVAL_S = 2.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def emit(event: str, **fields: Any) -> None:
    """One event line for the console of `spectrain run` (a plain line in a step's own output otherwise)."""
    print(MARK + json.dumps({"event": event, **fields}), flush=True)


def warn(text: str) -> None:
    """A warning a person should see: an event under `spectrain run` (and in the step's log), else a plain line."""
    if os.environ.get(EVENTS_ENV):
        emit("warn", label=os.environ.get(LABEL_ENV, ""), text=text)
    else:
        print(f"warning: {text}", file=sys.stderr, flush=True)


class Progress:
    """A progress bar: tqdm on stderr for a person running the step alone, events for `spectrain run`."""

    def __init__(self, total: int, desc: str, unit: str):
        from tqdm import tqdm

        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.events = bool(os.environ.get(EVENTS_ENV))
        self.bar = tqdm(
            total=total, desc=desc, unit=unit, mininterval=PROGRESS_INTERVAL_S, file=sys.stderr, disable=self.events
        )
        self.last = 0.0
        self._report(force=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        self._report(force=self.done >= self.total)

    def _report(self, force: bool = False) -> None:
        if not self.events or (not force and time.monotonic() - self.last < PROGRESS_INTERVAL_S):
            return
        self.last = time.monotonic()
        emit(
            "progress",
            label=os.environ.get(LABEL_ENV, ""),
            desc=self.desc,
            done=self.done,
            total=self.total,
            unit=self.unit,
        )

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class RunConsole(io.TextIOBase):
    """sys.stdout/sys.stderr of `spectrain run`: every line to the logs, events rendered on the terminal.

    ``verbose`` also echoes the raw stream (kfp.local's task inputs and outputs, every step's log).
    """

    def __init__(self, logs: Path, terminal: TextIO, verbose: bool = False):
        super().__init__()
        self.logs, self.terminal, self.verbose = logs, terminal, verbose
        logs.mkdir(parents=True, exist_ok=True)
        self.pipeline_log = open(logs / "pipeline.log", "a", encoding="utf-8")
        self.step_logs: dict[str, Path] = {}
        self.current: str | None = None  # label of the step whose output is streaming now
        self.current_log: TextIO | None = None
        self.failed: dict[str, dict] = {}  # label -> its end event
        self.bar: Any = None  # tqdm while a step reports progress
        self.bar_of: tuple = ()  # (description, total) of that bar
        self.pending = ""
        self.lock = threading.RLock()
        self.started = time.monotonic()

    # --- the stream -------------------------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # keeps tools that colour or animate a terminal (tqdm, kfp) out of the logs

    def write(self, text: str) -> int:
        with self.lock:
            if self.verbose:
                self.terminal.write(text)
            self.pending += text
            *lines, self.pending = self.pending.split("\n")
            for line in lines:
                self._line(line)
        return len(text)

    def flush(self) -> None:
        if self.pipeline_log.closed:
            return
        with self.lock:
            self.pipeline_log.flush()
            if self.current_log:
                self.current_log.flush()
            self.terminal.flush()

    def _line(self, line: str) -> None:
        plain = ANSI.sub("", line)
        body = plain[4:] if plain.startswith("    ") else plain  # kfp.local indents a task's streamed output
        event = None
        if body.lstrip().startswith(MARK):
            try:
                event = json.loads(body.lstrip()[len(MARK) :])
            except ValueError:
                event = None
        if event is None or event.get("event") != "progress":
            self.pipeline_log.write(plain + "\n")
            if self.current_log:
                self.current_log.write(body + "\n")
        if event is not None:
            try:
                self._render(event) if not self.verbose else self._track(event)
            except Exception as exc:  # the console must never be what fails a run
                self.pipeline_log.write(f"(console: could not show {event}: {type(exc).__name__}: {exc})\n")

    # --- events -----------------------------------------------------------------------------------
    def _track(self, event: dict) -> None:
        if event.get("event") not in ("start", "end"):
            return
        label = event_label(event)
        if event["event"] == "start":
            self.current = label
            path = self.logs / f"{label.replace(' ', '-')}.log"
            self.step_logs[label] = path
            self.current_log = open(path, "a", encoding="utf-8")
            self.current_log.write(MARK + json.dumps(event) + "\n")
        else:
            if self.current_log:
                self.current_log.write(MARK + json.dumps(event) + "\n")
                self.current_log.close()
            self.current, self.current_log = None, None
            if event.get("status") != "ok":
                self.failed[label] = event

    def _render(self, event: dict) -> None:
        kind = event.get("event")
        if kind in ("start", "end"):
            self._track(event)
        if kind == "start":
            self._say(f"{event_label(event)}: started")
        elif kind == "end":
            self._close_bar()
            label = event_label(event)
            if event.get("status") == "ok":
                note = f" ({event['note']})" if event.get("note") else ""
                self._say(f"{label}: done in {duration(event.get('seconds', 0))}{note}")
            else:
                self._say(
                    f"{label}: FAILED after {duration(event.get('seconds', 0))} — log: {self.step_logs.get(label)}"
                )
                if event.get("error"):
                    self._say("  " + event["error"].replace("\n", "\n  "), stamp=False)
                else:
                    self._say(tail(self.step_logs.get(label), 20), stamp=False)
        elif kind == "progress":
            self._progress(event)
        elif kind == "warn":
            self._close_bar()
            self._say(f"warning ({event.get('label') or 'pipeline'}): {event.get('text', '')}")

    def _progress(self, event: dict) -> None:
        from tqdm import tqdm

        desc = f"  {event.get('desc', '')}"
        # which bar this is, kept here: a disabled tqdm (no terminal) has no .desc to compare with
        if self.bar is None or self.bar_of != (desc, event.get("total")):
            self._close_bar()
            self.bar_of = (desc, event.get("total"))
            self.bar = tqdm(
                total=event.get("total"),
                desc=desc,
                unit=event.get("unit", "it"),
                file=self.terminal,
                dynamic_ncols=True,
                leave=False,
                disable=not self.terminal.isatty(),
            )
        self.bar.n = event.get("done", 0)
        self.bar.refresh()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _say(self, text: str, stamp: bool = True) -> None:
        prefix = f"[{duration(time.monotonic() - self.started):>7}] " if stamp else ""
        self.terminal.write(prefix + text + "\n")
        self.terminal.flush()

    def say(self, text: str) -> None:
        """A line of `spectrain run` itself, on the terminal and in pipeline.log."""
        with self.lock:
            self._close_bar()
            self.pipeline_log.write(text + "\n")
            self._say(text, stamp=False)

    def close(self) -> None:
        with self.lock:
            if self.pending:
                self._line(self.pending)
                self.pending = ""
            self._close_bar()
            if self.current_log:
                self.current_log.close()
            self.pipeline_log.close()
        super().close()


def event_label(event: dict) -> str:
    return " ".join(part for part in (event.get("step", ""), event.get("label", "")) if part)


def tail(path: Path | None, lines: int) -> str:
    if path is None or not path.exists():
        return "  (no log)"
    return "\n".join("  | " + line for line in path.read_text(errors="replace").splitlines()[-lines:])
