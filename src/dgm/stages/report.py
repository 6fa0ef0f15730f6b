"""DVC stage `report`: one markdown table of every configured, evaluated model and the
evaluator's floors (``artifacts/reports/<dataset>.md``)."""

from __future__ import annotations

from pathlib import Path

from dgm.config import Params
from dgm.errors import DgmError
from dgm.evaluation.metrics import CLASS_METRICS, METRICS
from dgm.evaluation.report import markdown_table
from dgm.paths import atomic_path
from dgm.stages.layout import layout, read_json


def run(params: Params, root: Path | None = None, output: Path | None = None) -> Path:
    """Write the comparison table to ``output`` (default: the stage's output); print it."""
    lay = layout(params, root)
    rows = {name: read_json(lay.eval_dir(name) / "metrics.json", "evaluation metrics")
            for name in params.models if (lay.eval_dir(name) / "metrics.json").is_file()}
    if not rows:
        raise DgmError(f"no evaluated models under {lay.eval_root} "
                       "(run `dgm evaluate --model`)")
    floors_file = lay.evaluator_dir / "metrics.json"
    floors = read_json(floors_file, "evaluator metrics") if floors_file.is_file() else {}
    floor_row = {k[len("floor_"):]: v for k, v in floors.items() if k.startswith("floor_")}
    if floor_row:
        rows["real test (floor)"] = floor_row
    if "test_reconstruction_mse" in floors:  # the label-free evaluator: no classes
        wanted = params.evaluate.metrics or list(METRICS)
        for row in rows.values():
            row.update({k: "n/a" for k in wanted if k in CLASS_METRICS})
    text = f"# {params.data.name}: evaluated models\n\n" + markdown_table(rows) + "\n"
    output = output or lay.report_file()
    with atomic_path(output) as tmp:
        tmp.write_text(text)
    print(text, end="")
    return output
