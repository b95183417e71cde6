"""Replaying greedy decoding: at each base step a proposer drafts k tokens from the committed prefix, the longest
prefix matching the base's greedy sequence is accepted, and the step emits accepted + 1 tokens. τ is tokens per
step; a Tally keeps the counts behind it."""

from __future__ import annotations

from dataclasses import dataclass, field

from spectrain.console import Progress


@dataclass
class Tally:
    """Counts behind τ and the per-position acceptance rates."""

    k: int
    steps: int = 0
    tokens: int = 0
    drafted: int = 0  # steps that verified a draft: all but a sequence's last step when it ends on a base token
    accepted_at: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.accepted_at = self.accepted_at or [0] * self.k

    def add(self, accepted: int, emitted: int, drafted: bool = True) -> None:
        self.steps += 1
        self.tokens += emitted
        self.drafted += drafted
        for position in range(accepted):
            self.accepted_at[position] += 1

    def merge(self, other: "Tally") -> None:
        self.steps += other.steps
        self.tokens += other.tokens
        self.drafted += other.drafted
        self.accepted_at = [a + b for a, b in zip(self.accepted_at, other.accepted_at)]

    def summary(self) -> dict:
        """τ = tokens per base step; ``acceptance_length_per_draft`` = 1 + accepted / drafts, vLLM's counters'
        definition, which leaves out a last step with nothing left to draft (it differs on short replies)."""
        return {
            "acceptance_length": self.tokens / max(self.steps, 1),
            "steps": self.steps,
            "tokens": self.tokens,
            "acceptance_length_per_draft": 1 + sum(self.accepted_at) / max(self.drafted, 1),
            "acceptance_rate_per_position": [a / max(self.steps, 1) for a in self.accepted_at],
        }


def replay(sequence: list[int], prompt_length: int, propose, k: int) -> Tally:
    """Replay greedy speculative decoding of ``sequence[prompt_length:]`` with drafts from ``propose``.

    ``propose(n)`` returns up to k draft tokens for positions n+1.. given the committed
    tokens ``sequence[:n+1]`` (token n is the one the base model just emitted).
    """
    return replay_curve(sequence, prompt_length, propose, [k])[k]


def replay_curve(sequence: list[int], prompt_length: int, propose, ks: list[int]) -> dict[int, Tally]:
    """``replay`` for every chain length in ``ks`` at once, each exact: a chain of k is the first k tokens of the
    longest chain (true of every drafter here), so ``propose`` runs once per position any of the replays visits,
    in increasing order of positions (the replay furthest behind moves first)."""
    longest, end = max(ks), len(sequence)
    tallies, at, proposed = {k: Tally(k) for k in ks}, dict.fromkeys(ks, prompt_length), dict[int, list[int]]()
    while any(n < end for n in at.values()):
        k = min((k for k in ks if at[k] < end), key=lambda k: at[k])
        n = at[k]
        if n + 1 < end and n not in proposed:
            proposed[n] = list(propose(n))[:longest]
        accepted = 0
        for offset, token in enumerate(proposed.get(n, [])[:k] if n + 1 < end else [], start=1):
            if n + offset < end and sequence[n + offset] == token:
                accepted += 1
            else:
                break
        tallies[k].add(accepted, accepted + 1, drafted=n + 1 < end)
        at[k] = n + accepted + 1
    return tallies


GROUPS = ("category", "source")  # what the held-out prompts are also told apart by: their category, their file


def evaluate_proposer(
    make_propose, prompts, sequences, ks: list[int], name: str = "draft", group_k: int = 0
) -> tuple[dict[int, Tally], dict[str, dict[str, Tally]]]:
    """Tallies for every chain length in ``ks`` (one replay each, drafts shared), and at ``group_k`` (default: the
    longest) per prompt category and per source file (``{"category": {name: Tally}, "source": ...}``)."""
    group_k = group_k or max(ks)
    totals = {k: Tally(k) for k in ks}
    groups: dict[str, dict[str, Tally]] = {group: {} for group in GROUPS}
    with Progress(len(prompts), f"replay: {name}", "prompt") as progress:
        for prompt, sequence in zip(prompts, sequences):
            tallies = replay_curve(sequence, len(prompt["input_ids"]), make_propose(sequence), ks)
            for k, tally in tallies.items():
                totals[k].merge(tally)
            for group, tallies_of in groups.items():
                tallies_of.setdefault(prompt[group], Tally(group_k)).merge(tallies[group_k])
            progress.update()
    return totals, groups
