"""What a run measured: figures of per-round values, each compared to its in-run reference."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Figure:
    """One table: per-round values for each label. `reference` is the label every other
    row is divided by, round by round (its ratio is the median of those per-round ratios)."""

    key: str
    title: str
    unit: str
    reference: str | None
    note: str = ""
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, label: str, value: float) -> None:
        self.values.setdefault(label, []).append(value)

    def median(self, label: str) -> float:
        return statistics.median(self.values[label])

    def ratios(self, label: str, reference: str | None = None) -> list[float]:
        reference = reference or self.reference
        pairs = zip(self.values[label], self.values.get(reference, ()))
        return [value / ref for value, ref in pairs if ref]

    def ratio(self, label: str, reference: str | None = None) -> float | None:
        ratios = self.ratios(label, reference)
        return statistics.median(ratios) if ratios else None

    def to_json(self) -> dict:
        return {"key": self.key, "title": self.title, "unit": self.unit,
                "reference": self.reference, "note": self.note, "values": self.values}


def spread(values: list[float]) -> str:
    """min-max of the rounds, as printed next to a median."""
    if len(values) < 2:
        return "-"
    return f"{fmt(min(values))}-{fmt(max(values))}"


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
