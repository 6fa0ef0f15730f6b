"""The pipeline's steps as functions: what the CLI and the DVC stage scripts call.

Each step reads typed params, calls the library, and writes its declared outputs under
``artifacts/`` (see :class:`Layout`), atomically.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgm.config import Params
from dgm.errors import DgmError
from dgm.paths import atomic_path, project_root


@dataclass(frozen=True)
class Layout:
    """Where each stage writes, for one dataset."""

    root: Path
    dataset: str

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def raw_dir(self) -> Path:
        """The DVC-tracked raw data (``data.dvc``)."""
        return self.root / "data"

    @property
    def data_dir(self) -> Path:
        return self.artifacts / "data" / self.dataset

    @property
    def evaluator_dir(self) -> Path:
        return self.artifacts / "evaluator" / self.dataset

    def model_dir(self, model: str) -> Path:
        return self.artifacts / "models" / self.dataset / model

    def eval_dir(self, model: str) -> Path:
        return self.artifacts / "eval" / self.dataset / model

    def registry_file(self, model: str) -> Path:
        return self.artifacts / "registry" / self.dataset / f"{model}.json"

    def samples_file(self, model: str) -> Path:
        return self.artifacts / "samples" / self.dataset / f"{model}.parquet"

    @property
    def ray_storage(self) -> Path:
        return self.artifacts / "ray_results"

    def tune_dir(self, model: str) -> Path:
        """The `tune` stage's outputs: best.yaml, results.parquet, curves.csv."""
        return self.artifacts / "tune" / self.dataset / model

    def study_pointer(self, model: str) -> Path:
        """Which study ``dgm tune --resume`` continues (name, storage, MLflow parent run)."""
        return self.ray_storage / ".tune" / f"{self.dataset}-{model}.json"


def layout(params: Params, root: Path | None = None) -> Layout:
    return Layout(root=(root or project_root()).resolve(), dataset=params.data.name)


def write_json(data: dict[str, Any], path: Path) -> Path:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DgmError(f"{what} not found: {path}")
    return json.loads(path.read_text())


# --- prepare --------------------------------------------------------------------------------
def prepare(params: Params, out: Path | None = None, root: Path | None = None) -> dict[str, int]:
    """Raw dataset → Parquet shards under ``artifacts/data/<dataset>``."""
    from dgm.data.parquet import write_dataset
    from dgm.data.sources import StackedSpec, load_raw, search_dirs

    lay = layout(params, root)
    raw = load_raw(params.data.name, search_dirs(lay.raw_dir), params.data.allow_download,
                   stacked=StackedSpec(**params.data.stacked.model_dump()))
    rows = write_dataset(
        raw, out or lay.data_dir, val_fraction=params.data.val_fraction,
        test_fraction=params.data.test_fraction, seed=params.data.seed,
        shard_rows=params.data.shard_rows,
    )
    print(f"prepared {params.data.name}: " + ", ".join(f"{k}={v}" for k, v in rows.items()))
    return rows


def init_raw_data(root: Path | None = None) -> Path:
    """Materialise ``data/`` (tracked by ``data.dvc``) without a DVC remote.

    ``data/digits`` receives scikit-learn's embedded ``digits.csv.gz`` — the exact bytes
    ``data.dvc`` records — so a fresh clone reproduces offline. IDX datasets are read from
    ``$DGM_DATA_DIR`` or downloaded by ``prepare``; a team with a remote uses ``dvc pull``.
    """
    import shutil

    from dgm.data.sources import DIGITS_FILE, digits_file

    data = (root or project_root()) / "data"
    target = data / "digits" / DIGITS_FILE
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(digits_file([]), tmp)
    return data


# --- evaluator ------------------------------------------------------------------------------
def train_evaluator(params: Params, root: Path | None = None) -> dict[str, Any]:
    """Train the domain classifier on the real train split; save it, its reference and its
    metrics: test accuracy and the floor of each quality metric (real test vs real train)."""
    from torch.utils.data import TensorDataset

    from dgm.data.loading import to_dataset
    from dgm.data.parquet import SPLITS, read_split
    from dgm.evaluation.classifier import (
        StackedClassifier,
        accuracy,
        save_classifier,
        split_stacked,
        train_classifier,
    )
    from dgm.evaluation.reference import REFERENCE_FILE, reference_and_holdout, save_reference
    from dgm.evaluation.scoring import Evaluator

    lay = layout(params, root)
    data = {s: read_split(lay.data_dir, s) for s in SPLITS}
    meta = data["train"].meta
    splits = {s: to_dataset(d) for s, d in data.items()}
    shape, num_classes = meta.shape_chw, max(len(meta.class_names), 1)
    fit_splits = splits
    if meta.stacked:  # one classifier for every channel, trained on the channels' digits
        num_classes = len(meta.channel_class_names)
        shape = (1, *shape[1:])
        fit_splits = {s: TensorDataset(*split_stacked(*d.tensors, num_classes))
                      for s, d in splits.items()}
    cfg = params.evaluator
    model, report = train_classifier(
        fit_splits["train"], fit_splits["val"], shape, num_classes, epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        patience=cfg.patience, seed=cfg.seed, max_steps=cfg.max_steps,
    )
    metrics = {"test_accuracy": accuracy(model, fit_splits["test"]),
               "val_accuracy": report.val_accuracy,
               "best_epoch": report.best_epoch, "epochs_run": report.epochs_run}
    if meta.stacked:
        model = StackedClassifier(model, meta.channels)
        metrics["test_mode_accuracy"] = accuracy(model, splits["test"])
    fingerprint = (cfg.model_dump_json() + params.data.model_dump_json()
                   + json.dumps(meta.checksums, sort_keys=True))
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    model.version = f"{params.data.name}-{digest}"
    reference, info, holdout = reference_and_holdout(model, data["train"], data["test"])
    evaluator = Evaluator.from_reference(model, reference, info)
    floors = evaluator.score_features(holdout, params.evaluate.metrics,
                                      params.evaluate.metric_options).metrics
    metrics.update({f"floor_{k}": v for k, v in floors.items()})
    save_classifier(model, lay.evaluator_dir / "classifier.pt", version=model.version)
    save_reference(reference, info, lay.evaluator_dir / REFERENCE_FILE)
    write_json(metrics, lay.evaluator_dir / "metrics.json")
    _log_evaluator(params, metrics, lay)
    print(f"evaluator test accuracy {metrics['test_accuracy']:.4f}; floors (test vs train): "
          + ", ".join(f"{k}={v:.4g}" for k, v in floors.items()))
    return metrics


def _log_evaluator(params: Params, metrics: dict[str, Any], lay: Layout) -> None:
    from dgm.tracking.mlflow_runs import RunLogger, start_run, tracking_uri

    uri = tracking_uri(lay.root)
    logged = {"evaluator": params.evaluator.model_dump(), "data": params.data.model_dump()}
    run_id = start_run(f"dgm-{params.data.name}", "evaluator", logged,
                       {"dgm.stage": "evaluator", "dgm.dataset": params.data.name}, uri=uri)
    logger = RunLogger(run_id, uri)
    logger.log_metrics({k: float(v) for k, v in metrics.items()})
    logger.log_file(lay.evaluator_dir / "classifier.pt", "evaluator")
    logger.end()


# --- train ----------------------------------------------------------------------------------
def train(params: Params, model_name: str, root: Path | None = None, run_name: str | None = None,
          resume: bool = False) -> dict[str, Any]:
    """Train ``model_name`` on Ray Train, log it to MLflow, write the stage outputs."""
    from dgm.data.parquet import read_meta
    from dgm.tracking.lineage import collect_lineage, tag_run
    from dgm.tracking.mlflow_runs import RunLogger, log_generator, start_run, tracking_uri
    from dgm.training import ray_train

    lay = layout(params, root)
    model_cfg, tuned = tuned_config(params, model_name, lay)
    meta = read_meta(lay.data_dir / "train")
    check_classes(model_cfg, meta, model_name)
    prefix = f"{params.data.name}-{model_name}-"
    if resume:
        run_name = run_name or ray_train.latest_run_name(lay.ray_storage, prefix)
        if run_name is None:
            raise DgmError(f"--resume: no earlier run {prefix}* under {lay.ray_storage}")
    run_name = run_name or prefix + ray_train.timestamp()
    uri = tracking_uri(lay.root)
    run_file = lay.ray_storage / ".mlflow" / f"{run_name}.json"
    if resume and run_file.is_file():
        run_id = json.loads(run_file.read_text())["run_id"]
    else:
        run_id = start_run(
            f"dgm-{params.data.name}", run_name,
            {"data": params.data.model_dump(), "model": model_cfg.model_dump(),
             "train": params.train.model_dump()},
            {"dgm.stage": "train", "dgm.dataset": params.data.name, "dgm.model": model_name,
             **({"dgm.tuned_by": tuned["study"]} if tuned else {})},
            uri=uri,
        )
        write_json({"run_id": run_id}, run_file)
    tag_run(run_id, collect_lineage(params, model_name, lay.root, model_cfg), uri)  # on resume too
    logger = RunLogger(run_id, uri)
    try:
        history, state = ray_train.fit(
            dataset_dir=lay.data_dir, model_config=model_cfg, train_config=params.train,
            storage_path=lay.ray_storage, run_name=run_name, run_id=run_id, tracking_uri=uri,
        )
    except KeyboardInterrupt:
        logger.end("KILLED", "interrupted; resume with --resume")
        raise
    except BaseException as exc:
        reason = logger.client.get_run(run_id).data.tags.get("dgm.failure_reason")
        logger.end("FAILED", reason or str(exc))
        if reason:
            raise DgmError(f"training stopped: {reason}") from None
        raise
    out = lay.model_dir(model_name)
    generator_path = ray_train.write_outputs(
        state, history, out,
        extra={"dataset": meta.name, "class_names": list(meta.class_names),
               "checksums": dict(meta.checksums)},
    )
    logger.log_file(out / "history.csv", "curves")
    _log_loss_plot(logger, history)
    model_uri = log_generator(run_id, generator_path, meta.shape_chw, uri)
    logger.end("FINISHED")
    info = {"run_id": run_id, "model_uri": model_uri, "run_name": run_name,
            "dataset": params.data.name, "model": model_name, "epochs": len(history),
            "final": {k: v for k, v in history[-1].items() if k != "epoch"} if history else {}}
    write_json(info, out / "run.json")
    return info


def tuned_config(params: Params, model_name: str, lay: Layout):
    """``models.<name>`` with the `tune` stage's best params applied (when it tuned the
    model); returns (config, the best.yaml record or None)."""
    import yaml

    from dgm.tuning.space import apply_overrides

    model_cfg = params.model(model_name)
    best_file = lay.tune_dir(model_name) / "best.yaml"
    if not best_file.is_file():
        return model_cfg, None
    record = yaml.safe_load(best_file.read_text()) or {}
    if not record.get("tuned"):
        return model_cfg, None
    try:
        model_cfg = apply_overrides(model_cfg, record.get("params") or {})
    except DgmError as exc:
        raise DgmError(f"{best_file}: the tuned params do not fit models.{model_name}: {exc}"
                       ) from None
    print(f"{model_name}: tuned params from {best_file.name} ({record.get('study')}): "
          + ", ".join(f"{k}={v}" for k, v in (record.get("params") or {}).items()))
    return model_cfg, record


def check_classes(model_cfg, meta, model_name: str) -> None:
    """A conditional model's ``num_classes`` must be the dataset's class count."""
    if getattr(model_cfg, "conditional", False) and model_cfg.num_classes != len(
            meta.class_names):
        raise DgmError(f"models.{model_name}.num_classes is {model_cfg.num_classes} but "
                       f"{meta.name} has {len(meta.class_names)} classes")


def _log_loss_plot(logger, history: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dgm.training.loop import BOOKKEEPING_KEYS

    keys = [k for k in history[0] if k not in BOOKKEEPING_KEYS] if history else []
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    for key in keys:
        ax.plot(epochs, [row[key] for row in history], label=key)
    ax.set_xlabel("epoch")
    ax.legend()
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:  # not into the stage's DVC output folder
        path = Path(tmp) / "loss_curves.png"
        fig.savefig(path)
        logger.log_file(path, "curves")
    plt.close(fig)


# --- tune -----------------------------------------------------------------------------------
def tune(params: Params, model_name: str, root: Path | None = None,
         resume: bool = False) -> dict[str, Any]:
    """Search ``model_name``'s hyperparameters (if ``tune.models`` lists it) and write
    ``artifacts/tune/<dataset>/<model>/``: ``best.yaml`` (what `train` applies),
    ``results.parquet`` (one row per trial) and ``curves.csv`` (val metric per epoch)."""
    from dgm.data.parquet import read_meta
    from dgm.tracking.mlflow_runs import tracking_uri
    from dgm.tuning.results import write_study, write_untuned

    lay = layout(params, root)
    model_cfg = params.model(model_name)
    out = lay.tune_dir(model_name)
    if model_name not in params.tune.models:
        if resume:
            raise DgmError(f"--resume: {model_name} is not in tune.models")
        write_untuned(out, model_name)
        print(f"{model_name}: not in tune.models; `train` uses models.{model_name} as set")
        return {"model": model_name, "tuned": False}
    check_classes(model_cfg, read_meta(lay.data_dir / "train"), model_name)
    from dgm.tuning.study import run_study

    uri = tracking_uri(lay.root)
    result = run_study(params, model_name, dataset_dir=lay.data_dir,
                       evaluator_dir=lay.evaluator_dir, storage_path=lay.ray_storage,
                       tracking_uri=uri, pointer=lay.study_pointer(model_name), resume=resume)
    record = write_study(result, out, model_name, model_cfg.family, uri)
    print(f"{model_name}: best trial {record['trial_id']} {record['metric']}="
          f"{record['score']:.4g}: " + ", ".join(f"{k}={v}" for k, v in record["params"].items()))
    return record


# --- evaluate -------------------------------------------------------------------------------
def evaluate(params: Params, model_name: str, root: Path | None = None) -> dict[str, float]:
    """Score a trained generator's samples against the real train split (and, for models
    with a likelihood, its NLL on the test split); write and log the report files."""
    from dgm.data.loading import to_float_tensor
    from dgm.data.parquet import read_split
    from dgm.evaluation.likelihood import negative_log_likelihood, supports_likelihood
    from dgm.evaluation.scoring import Evaluator
    from dgm.images import save_grid
    from dgm.models.generator import balanced_labels, load_generator, sample_uint8
    from dgm.tracking.mlflow_runs import RunLogger, tracking_uri

    lay = layout(params, root)
    model_dir = lay.model_dir(model_name)
    generator = load_generator(model_dir / "generator.pt")
    cfg = params.evaluate
    labels = balanced_labels(generator, cfg.num_samples)  # conditional: every class alike
    images = sample_uint8(generator, cfg.num_samples, cfg.seed, labels)
    out = lay.eval_dir(model_name)
    evaluator = Evaluator.open(lay.evaluator_dir, lay.data_dir)
    result = evaluator.score(images, cfg.metrics, cfg.metric_options)
    if labels is not None:
        result.metrics["label_accuracy"] = evaluator.label_accuracy(images, labels)
    if supports_likelihood(generator):
        test = read_split(lay.data_dir, "test").images[: cfg.nll_max_images]
        result.metrics.update(negative_log_likelihood(
            generator, to_float_tensor(test), cfg.nll_importance_samples, seed=cfg.seed))
    accuracy = read_json(lay.evaluator_dir / "metrics.json", "evaluator metrics")
    result.metrics["evaluator_test_accuracy"] = float(accuracy["test_accuracy"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(result.metrics, out / "metrics.json")
    save_grid(images, out / "samples.png")
    result.save_histogram(out / "class_histogram.png")
    run = read_json(model_dir / "run.json", "training record")
    logger = RunLogger(run["run_id"], tracking_uri(lay.root))
    logger.log_metrics({f"eval_{k}": v for k, v in result.metrics.items()})
    for name in ("metrics.json", "samples.png", "class_histogram.png"):
        logger.log_file(out / name, "evaluation")
    print(f"{model_name}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()))
    return result.metrics


def report(params: Params, root: Path | None = None, output: Path | None = None) -> Path:
    """Markdown table comparing every configured model evaluated on the dataset, with the
    floors (``artifacts/reports/<dataset>.md``)."""
    from dgm.evaluation.report import markdown_table

    lay = layout(params, root)
    eval_root = lay.artifacts / "eval" / params.data.name
    rows = {name: read_json(eval_root / name / "metrics.json", "evaluation metrics")
            for name in params.models if (eval_root / name / "metrics.json").is_file()}
    if not rows:
        raise DgmError(f"no evaluated models under {eval_root} (run `dgm evaluate --model`)")
    floors = read_json(lay.evaluator_dir / "metrics.json", "evaluator metrics") \
        if (lay.evaluator_dir / "metrics.json").is_file() else {}
    floor_row = {k[len("floor_"):]: v for k, v in floors.items() if k.startswith("floor_")}
    if floor_row:
        rows["real test (floor)"] = floor_row
    text = f"# {params.data.name}: evaluated models\n\n" + markdown_table(rows) + "\n"
    output = output or lay.artifacts / "reports" / f"{params.data.name}.md"
    with atomic_path(output) as tmp:
        tmp.write_text(text)
    print(text, end="")
    return output


# --- register -------------------------------------------------------------------------------
def register(params: Params, model_name: str, root: Path | None = None) -> dict[str, Any]:
    """Register the trained generator; move ``champion`` only if it beats the incumbent."""
    from dgm.tracking.lineage import lineage_tags_for_version
    from dgm.tracking.registry import model_name as registered_name
    from dgm.tracking.registry import register_generator

    lay = layout(params, root)
    run = read_json(lay.model_dir(model_name) / "run.json", "training record")
    metrics = read_json(lay.eval_dir(model_name) / "metrics.json", "evaluation metrics")
    cfg = params.register_
    if cfg.metric not in metrics:
        raise DgmError(f"register.metric {cfg.metric!r} is not among the evaluation metrics "
                       f"({', '.join(sorted(metrics))})")
    decision = register_generator(
        run["model_uri"], registered_name(params.data.name, model_name), cfg.metric,
        float(metrics[cfg.metric]), cfg.mode, cfg.min_delta,
        tags=lineage_tags_for_version(run["run_id"]),
    )
    print(decision.message)
    write_json(decision.to_dict(), lay.registry_file(model_name))
    return decision.to_dict()
