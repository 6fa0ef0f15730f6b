"""The markdown comparison table of evaluated models."""

from __future__ import annotations

import pytest

from dgm.evaluation.metrics import (
    DIRECTIONS,
    METRICS,
    lower_is_better,
    metric_mode,
    register_metric,
)
from dgm.evaluation.report import markdown_table


def parse(table: str) -> tuple[list[str], list[str], list[list[str]]]:
    """Header cells, the separator line's cells and the body rows' cells."""
    lines = table.split("\n")
    for line in lines:
        assert line.startswith("|") and line.endswith("|")

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line[1:-1].split("|")]

    return cells(lines[0]), cells(lines[1]), [cells(line) for line in lines[2:]]


def test_header_rows_and_arrows():
    rows = {"vae": {"fid": 12.5, "precision": 0.75, "nll_nats": 80.0},
            "gan": {"fid": 9.0, "precision": 0.5}}
    header, separator, body = parse(markdown_table(rows))
    assert header == ["model", "fid ↓", "precision ↑", "nll_nats ↓"]
    assert separator == ["---"] * 4
    assert body == [["vae", "12.5", "0.75", "80"], ["gan", "9", "0.5", ""]]


def test_exact_text():
    table = markdown_table({"m": {"kid": 0.5, "modes_covered": 10.0}})
    assert table == "| model | kid ↓ | modes_covered ↑ |\n|---|---|---|\n| m | 0.5 | 10 |"


def test_every_registered_metric_has_an_arrow_matching_its_direction():
    rows = {"m": {name: 1.0 for name in METRICS}}
    header, _, _ = parse(markdown_table(rows))
    assert len(header) == 1 + len(METRICS)
    for name, cell in zip(METRICS, header[1:], strict=True):
        arrow = "↓" if lower_is_better(name) else "↑"
        assert cell == f"{name} {arrow}"
    lower = {name for name in METRICS if lower_is_better(name)}
    assert lower == {"fid", "kid", "kid_std", "class_kl", "mode_kl", "swd", "swd_pixel",
                     "memorization"}
    higher = set(METRICS) - lower
    assert higher == {"precision", "recall", "density", "coverage", "class_entropy",
                      "modes_covered", "inception_score"}


def test_registered_metrics_come_first_in_registry_order():
    keys = ["zeta_custom", "memorization", "alpha_custom", "nll_nats", "kid_std", "kid",
            "swd_pixel", "recall", "fid", "precision", "class_entropy", "swd"]
    rows = {"m": {k: 1.0 for k in keys}}
    header, _, _ = parse(markdown_table(rows))
    names = [cell.split(" ")[0] for cell in header[1:]]
    registered = [k for k in METRICS if k in keys]
    assert names[: len(registered)] == registered
    assert names[: len(registered)] == ["fid", "kid", "kid_std", "precision", "recall",
                                        "class_entropy", "swd", "swd_pixel", "memorization"]
    # Then the rest sorted by name.
    assert names[len(registered):] == ["alpha_custom", "nll_nats", "zeta_custom"]
    # Unknown keys have no arrow unless their direction is known.
    assert "alpha_custom" in header and "zeta_custom" in header
    assert "nll_nats ↓" in header and "kid_std ↓" in header


def test_missing_values_are_blank():
    rows = {"a": {"fid": 1.0}, "b": {"kid": 2.0}, "c": {}}
    header, _, body = parse(markdown_table(rows))
    assert header == ["model", "fid ↓", "kid ↓"]
    assert body == [["a", "1", ""], ["b", "", "2"], ["c", "", ""]]


@pytest.mark.parametrize(("value", "text"), [
    (3.14159265, "3.142"),
    (1234.5678, "1235"),
    (0.000123456, "0.0001235"),
    (12345678.0, "1.235e+07"),
    (2.0, "2"),
    (-0.5, "-0.5"),
    (0.0, "0"),
])
def test_numbers_have_four_significant_digits(value, text):
    _, _, body = parse(markdown_table({"m": {"fid": value}}))
    assert body == [["m", text]]


def test_models_keep_their_order():
    rows = {name: {"fid": float(i)} for i, name in enumerate(["zz", "aa", "mm"])}
    _, _, body = parse(markdown_table(rows))
    assert [row[0] for row in body] == ["zz", "aa", "mm"]


def test_newly_registered_metric_is_ordered_and_gets_an_arrow():
    def fn(real, gen, options):
        return 0.0

    register_metric("test_report_metric", lower_is_better=True)(fn)
    try:
        header, _, _ = parse(markdown_table({"m": {"test_report_metric": 1.0,
                                                   "aaa_unknown": 2.0}}))
    finally:
        METRICS.pop("test_report_metric", None)
        DIRECTIONS.pop("test_report_metric", None)
    assert header == ["model", "test_report_metric ↓", "aaa_unknown"]


def test_likelihood_keys_carry_their_direction_and_modes_follow_it():
    header, _, _ = parse(markdown_table({"m": {"nll_nats": 80.0, "label_accuracy": 0.9}}))
    assert header == ["model", "label_accuracy", "nll_nats ↓"]  # unregistered keys: sorted
    assert metric_mode("fid") == "min" and metric_mode("nll_nats") == "min"
    assert metric_mode("recall") == "max" and metric_mode("coverage") == "max"
    assert metric_mode("label_accuracy") == "min"  # unknown direction: the default
    assert metric_mode("label_accuracy", default="max") == "max"
