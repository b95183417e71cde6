"""vLLM's speculative-decoding counters: read from its Prometheus `/metrics`, and turned into τ over a window.

vLLM (v1) counts, per engine, `vllm:spec_decode_num_drafts_total` (verification steps that carried a draft),
`..._num_draft_tokens_total`, `..._num_accepted_tokens_total` and `..._num_accepted_tokens_per_pos_total
{position="i"}`. τ, the tokens a verification step yields, is 1 + accepted / drafts; the acceptance rate at
position i is accepted_at_i / drafts. Counters only grow, except when a server restarts (back to 0):
:func:`increase` follows Prometheus' ``increase()`` and counts a drop as a reset, never as negative traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PREFIX = "vllm:spec_decode_num_"


@dataclass
class Counters:
    """One server's spec-decode counters at one moment (summed over its engines), or a window's increase."""

    drafts: float = 0.0
    draft_tokens: float = 0.0
    accepted: float = 0.0
    per_position: dict[int, float] = field(default_factory=dict)

    def __add__(self, other: Counters) -> Counters:
        positions = self.per_position.keys() | other.per_position.keys()
        return Counters(
            self.drafts + other.drafts,
            self.draft_tokens + other.draft_tokens,
            self.accepted + other.accepted,
            {p: self.per_position.get(p, 0.0) + other.per_position.get(p, 0.0) for p in sorted(positions)},
        )

    def __sub__(self, earlier: Counters) -> Counters:
        return Counters(
            self.drafts - earlier.drafts,
            self.draft_tokens - earlier.draft_tokens,
            self.accepted - earlier.accepted,
            {p: v - earlier.per_position.get(p, 0.0) for p, v in self.per_position.items()},
        )

    def reset_since(self, earlier: Counters) -> bool:
        """Some counter went down: the server restarted in between (its counters began again at 0)."""
        return (
            self.drafts < earlier.drafts
            or self.draft_tokens < earlier.draft_tokens
            or self.accepted < earlier.accepted
            or any(self.per_position.get(p, 0.0) < v for p, v in earlier.per_position.items())
        )

    @property
    def acceptance_length(self) -> float:
        return 1.0 + self.accepted / self.drafts if self.drafts else 1.0

    @property
    def acceptance_rate_per_position(self) -> list[float]:
        return [self.per_position[p] / self.drafts if self.drafts else 0.0 for p in sorted(self.per_position)]

    def report(self) -> dict:
        """The counts, τ and the per-position rates, as results and MLflow record them."""
        return {
            "drafts": self.drafts,
            "draft_tokens": self.draft_tokens,
            "accepted_tokens": self.accepted,
            "acceptance_length": self.acceptance_length,
            "acceptance_rate_per_position": self.acceptance_rate_per_position,
        }

    def to_dict(self) -> dict:
        return {
            "drafts": self.drafts,
            "draft_tokens": self.draft_tokens,
            "accepted_tokens": self.accepted,
            "per_position": {str(p): v for p, v in self.per_position.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Counters:
        return cls(
            data["drafts"],
            data["draft_tokens"],
            data["accepted_tokens"],
            {int(p): v for p, v in data.get("per_position", {}).items()},
        )


def parse(metrics_text: str) -> Counters:
    """The spec-decode counters in a Prometheus text exposition (prometheus_client's parser), summed over every
    engine (label set)."""
    from prometheus_client.parser import text_string_to_metric_families  # (the watch's and the serve env's only)

    counters = Counters()
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if not sample.name.startswith(PREFIX) or sample.name.endswith("_created"):  # (a counter's start time)
                continue
            name = sample.name.removeprefix(PREFIX).removesuffix("_total")
            if name == "accepted_tokens_per_pos":
                if "position" in sample.labels:
                    index = int(sample.labels["position"])
                    counters.per_position[index] = counters.per_position.get(index, 0.0) + sample.value
            elif name == "drafts":
                counters.drafts += sample.value
            elif name == "draft_tokens":
                counters.draft_tokens += sample.value
            elif name == "accepted_tokens":
                counters.accepted += sample.value
    counters.per_position = dict(sorted(counters.per_position.items()))
    return counters


def increase(snapshots: list[Counters]) -> Counters:
    """What one server counted across ``snapshots`` (oldest first): the sum of the steps between neighbours,
    where a step across a restart counts what the new server counted since it started."""
    total = Counters()
    for earlier, later in zip(snapshots, snapshots[1:]):
        total = total + (later if later.reset_since(earlier) else later - earlier)
    return total
