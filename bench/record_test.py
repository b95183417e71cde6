"""Record a finished `make test` as bench/results/make-test-<date>.json, from its output.

    make test 2>&1 | tee test.log; python bench/record_test.py test.log --total-seconds 1273 --commit abc1234
    make test-fast 2>&1 | tee fast.log; python bench/record_test.py fast.log --command "make test-fast" --total-seconds 282

Reads each pytest run's summary (tests/run_all.sh prints `=== [env] pytest ...` or `=== [env:part] pytest ...`
before each; with two lanes at once their seconds add up to more than the total).
`make fresh-check` (scripts/fresh-check.sh) keeps each command's log in its scratch directory (2.log is
`make test`'s) and prints its time. A note in --command's parentheses says how it ran and is not part of the
result's name, e.g. --command "make test (fresh clone, empty home and caches, after make run created the environments)".
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results  # noqa: E402

SECTION = re.compile(r"=== \[([\w:-]+)\] pytest.*?\n(.*?)(?==== \[|\Z)", re.S)  # [env] or [env:part]
SUMMARY = re.compile(r"(?:(\d+) failed, )?(\d+) passed.* in ([\d.]+)s")


def environments(log: str) -> dict:
    found = {}
    for env, block in SECTION.findall(log):
        match = SUMMARY.search(block)
        if match:
            found[env] = {
                "tests": int(match.group(2)) + int(match.group(1) or 0),
                "failed": int(match.group(1) or 0),
                "seconds": float(match.group(3)),
            }
    if not found:
        raise SystemExit("no `=== [env] pytest` sections with a pytest summary in that log")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path)
    parser.add_argument("--command", default="make test")
    parser.add_argument("--total-seconds", type=float, required=True)
    parser.add_argument("--commit", default=None, help="commit the tests ran at (default: this checkout's)")
    args = parser.parse_args(argv)
    envs = environments(args.log.read_text(errors="replace"))
    figures = {
        "environments": envs,
        "total_seconds": args.total_seconds,
        "failed": sum(row["failed"] for row in envs.values()),
    }
    name = "-".join(args.command.split("(")[0].split())  # make-test, make-test-fast; a note in (...) is not named
    print(f"wrote {results.write(name, args.command, figures, at_commit=args.commit)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
