"""Comparison tables of evaluated models."""

from __future__ import annotations

from dgm.evaluation.metrics import METRICS

# Direction of each metric for the reader: ↓ lower is better, ↑ higher is better.
LOWER_IS_BETTER = {"fid", "kid", "kid_std", "class_kl", "mode_kl", "swd", "swd_pixel",
                   "memorization", "nll_nats", "nll_nats_stderr"}


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    """One row per model, one column per metric (registered metrics first, in their order)."""
    keys = {k for metrics in rows.values() for k in metrics}
    ordered = [k for k in METRICS if k in keys]
    ordered += sorted(keys - set(ordered))
    header = ["model", *(f"{k} {'↓' if k in LOWER_IS_BETTER else '↑'}"
                         if k in METRICS or k in LOWER_IS_BETTER else k for k in ordered)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, metrics in rows.items():
        lines.append("| " + " | ".join([model, *(_format(metrics.get(k)) for k in ordered)]) + " |")
    return "\n".join(lines)
