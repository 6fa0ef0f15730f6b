"""DVC stage `evaluate@MODEL`: score a trained generator's samples with the evaluator (and
its likelihood on the test split, where it has one); also ``dgm evaluate --samples``."""

from __future__ import annotations

from pathlib import Path

from dgm.config import Params
from dgm.data.loading import to_float_tensor
from dgm.data.parquet import read_split
from dgm.errors import DgmError
from dgm.evaluation.likelihood import negative_log_likelihood, supports_likelihood
from dgm.evaluation.scoring import Evaluator, load_samples
from dgm.images import save_grid
from dgm.models.generator import balanced_labels, load_generator, sample_uint8
from dgm.stages.layout import layout, read_json, write_json
from dgm.tracking.mlflow_runs import RunLogger, tracking_uri

OUTPUTS = ("metrics.json", "samples.png", "class_histogram.png")


def run(params: Params, model_name: str, root: Path | None = None) -> dict[str, float]:
    """Score a trained generator's samples against the real train split (and, for models
    with a likelihood, its NLL on the test split); write and log the report files."""
    lay = layout(params, root)
    model_dir = lay.model_dir(model_name)
    generator = load_generator(model_dir / "generator.pt")
    cfg = params.evaluate
    labels = balanced_labels(generator, cfg.num_samples)  # conditional: every class alike
    images = sample_uint8(generator, cfg.num_samples, cfg.seed, labels)
    evaluator = Evaluator.open(lay.evaluator_dir, lay.data_dir)
    result = evaluator.score(images, cfg.metrics, cfg.metric_options)
    if labels is not None:
        result.metrics["label_accuracy"] = evaluator.label_accuracy(images, labels)
    if supports_likelihood(generator):
        test = read_split(lay.data_dir, "test").images[: cfg.nll_max_images]
        result.metrics.update(negative_log_likelihood(
            generator, to_float_tensor(test), cfg.nll_importance_samples, seed=cfg.seed))
    fitted = read_json(lay.evaluator_dir / "metrics.json", "evaluator metrics")
    if "test_accuracy" in fitted:
        result.metrics["evaluator_test_accuracy"] = float(fitted["test_accuracy"])
    out = lay.eval_dir(model_name)
    out.mkdir(parents=True, exist_ok=True)
    write_json(result.metrics, out / "metrics.json")
    save_grid(images, out / "samples.png")
    result.save_histogram(out / "class_histogram.png")
    run_record = read_json(model_dir / "run.json", "training record")
    logger = RunLogger(run_record["run_id"], tracking_uri(lay.root))
    logger.log_metrics({f"eval_{k}": v for k, v in result.metrics.items()})
    for name in OUTPUTS:
        logger.log_file(out / name, "evaluation")
    print(f"{model_name}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()))
    if result.not_applicable:
        print(f"{model_name}: n/a without labels: {', '.join(result.not_applicable)}")
    return result.metrics


def score_samples(params: Params, samples: Path, evaluator: Path | None = None,
                  metrics: list[str] | None = None, output: Path | None = None,
                  dataset: str | None = None) -> dict[str, float]:
    """Score images from ``samples`` (Parquet, .npz or PNGs) with the evaluator (default:
    the evaluator stage's output); write the metrics to ``output`` when given."""
    lay = layout(params)
    scorer = Evaluator.open(evaluator or lay.evaluator_dir, lay.data_dir)
    if dataset is not None and scorer.meta.name != dataset:
        raise DgmError(f"the evaluator judges {scorer.meta.name}, not {dataset}")
    images = load_samples(samples, scorer.meta)
    result = scorer.score(images, metrics or params.evaluate.metrics,
                          params.evaluate.metric_options)
    if output is not None:
        write_json(result.metrics, output)
    return result.metrics
