"""Comparison tables of evaluated models."""

from __future__ import annotations

import dgm.evaluation.likelihood  # noqa: F401 - registers the direction of nll_nats
from dgm.evaluation.metrics import METRICS, lower_is_better


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _header(key: str) -> str:
    """``fid ↓``, ``recall ↑``: the metric's registered direction for the reader."""
    direction = lower_is_better(key)
    return key if direction is None else f"{key} {'↓' if direction else '↑'}"


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    """One row per model, one column per metric (registered metrics first, in their order)."""
    keys = {k for metrics in rows.values() for k in metrics}
    ordered = [k for k in METRICS if k in keys]
    ordered += sorted(keys - set(ordered))
    header = ["model", *(_header(k) for k in ordered)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, metrics in rows.items():
        lines.append("| " + " | ".join([model, *(_format(metrics.get(k)) for k in ordered)]) + " |")
    return "\n".join(lines)
