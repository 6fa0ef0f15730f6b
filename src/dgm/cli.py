"""The ``dgm`` command. User errors print one line and exit with status 2."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from dgm.errors import DgmError
from dgm.section import MAX_SEED
from dgm.signals import was_terminated
from dgm.stages.entry import fail, guarded, quiet_libraries

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Deep generative models: prepare, tune, train, evaluate, register, "
                  "generate.")
data_app = typer.Typer(add_completion=False, help="Raw data tracked by data.dvc.")
app.add_typer(data_app, name="data")

PARAMS = typer.Option(None, "--params",
                      help="DVC params file [default: configs/params.yaml of the project].")


def _params(path: Path | None, dataset: str | None = None):
    """The params file given, else the project's (defaults outside a project)."""
    from dgm.config import Params, load_params
    from dgm.paths import project_root

    if path is None:
        path = project_root() / "configs" / "params.yaml"
        params = load_params(path) if path.is_file() else Params()
    else:
        params = load_params(path)
    if dataset is not None:
        params.data.name = dataset
    return params


def _baseline():
    """The project's params (the defaults if it has none, or none that load)."""
    from dgm.config import Params

    try:
        return _params(None)
    except DgmError:
        return Params()


@data_app.command("init")
def data_init() -> None:
    """Materialise data/ (tracked by data.dvc) from the embedded dataset, offline."""
    from dgm.stages.prepare import init_raw_data

    print(f"raw data ready in {init_raw_data()}")


@app.command()
def prepare(params: Path = PARAMS, dataset: str = typer.Option(None, help="Override data.name."),
            out: Path = typer.Option(None, help="Output directory.")) -> None:
    """Turn a raw dataset into Parquet shards <out>/<split>/part-*.parquet."""
    from dgm.stages import prepare as stage

    stage.run(_params(params, dataset), out=out)


@app.command()
def shapes(out: Path = typer.Option(..., help="Folder to create: <out>/<class>/<i>.<format>."),
           images: int = typer.Option(2000, help="Number of images (balanced over 10 classes)."),
           resolution: int = typer.Option(32, help="Side in pixels (16..128)."),
           seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Same seed, same images."),
           image_format: str = typer.Option("png", "--format", help="png or jpg.")) -> None:
    """Write the embedded colour 'shapes' dataset (shape x colour) as an image folder."""
    from dgm.data.shapes import write_shapes_folder

    counts = write_shapes_folder(out, images, resolution=resolution, seed=seed,
                                 image_format=image_format)
    print(f"wrote {sum(counts.values())} {resolution}x{resolution} images in {len(counts)} "
          f"class folders to {out}")


@app.command()
def evaluator(params: Path = PARAMS) -> None:
    """Train the evaluator classifier on the real train split."""
    from dgm.stages import evaluator as stage

    stage.run(_params(params))


@app.command()
def train(model: str = typer.Option(..., help="A key of `models` in the params file."),
          params: Path = PARAMS,
          run_name: str = typer.Option(None, help="Ray Train run name (default: timestamped)."),
          resume: bool = typer.Option(False, help="Continue the latest (or named) run.")) -> None:
    """Train a model with Ray Train, track it in MLflow. Tuned params (the `tune` stage's
    best.yaml) apply, except where an explicit --params file differs from the project's."""
    from dgm.stages import train as stage

    chosen = _params(params)
    keep = () if params is None else stage.explicit_keys(chosen, model, _baseline())
    stage.run(chosen, model, run_name=run_name, resume=resume, keep=keep)


@app.command()
def tune(model: str = typer.Option(..., help="A key of `models` in the params file."),
         params: Path = PARAMS,
         resume: bool = typer.Option(False, help="Continue the interrupted study: finished "
                                     "trials are kept, the others run (Tuner.restore).")) -> None:
    """Search the model's hyperparameters with Ray Tune (ASHA + Optuna); write the best."""
    from dgm.stages import tune as stage

    stage.run(_params(params), model, resume=resume)


@app.command()
def evaluate(
    model: str = typer.Option(None, help="Score this trained model of the pipeline."),
    params: Path = PARAMS,
    dataset: str = typer.Option(None, help="Dataset whose evaluator judges (default: data.name)."),
    samples: Path = typer.Option(
        None, help="Images to score: dgm Parquet (file or folder), .npz with `images`, or a "
        "folder of PNGs."),
    output: Path = typer.Option(None, help="Metrics JSON (--samples) or markdown (--report)."),
    evaluator: Path = typer.Option(
        None, help="classifier.pt (or its folder); default: the evaluator stage's output."),
    metrics: str = typer.Option(None, help="Comma-separated metric names (default: all)."),
    report: bool = typer.Option(False, "--report", help="Markdown table of evaluated models."),
) -> None:
    """Score generated images with the evaluator's metrics."""
    from dgm.stages import evaluate as stage
    from dgm.stages import report as report_stage

    p = _params(params, dataset)
    if report:
        if samples is not None or model is not None:
            raise DgmError("--report compares evaluated models: give it without --samples/--model")
        report_stage.run(p, output=output)
        return
    if samples is None:
        if model is None:
            raise DgmError("give --model (a pipeline model), --samples PATH or --report")
        stage.run(p, model)
        return
    names = None
    if metrics is not None:
        names = [m.strip() for m in metrics.split(",") if m.strip()]
        if not names:
            raise DgmError("--metrics: list at least one metric name")
    values = stage.score_samples(p, samples, evaluator=evaluator, metrics=names, output=output,
                                 dataset=dataset)
    print(" ".join(f"{k}={v:.4g}" for k, v in values.items()))


@app.command()
def register(model: str = typer.Option(..., help="A key of `models` in the params file."),
             params: Path = PARAMS) -> None:
    """Register the trained generator; move `champion` if it beats the incumbent."""
    from dgm.stages import register as stage

    stage.run(_params(params), model)


@app.command()
def generate(
    model_uri: str = typer.Option(..., help="e.g. models:/dgm-digits-gan@champion"),
    num_samples: int = typer.Option(10_000, help="Number of images (any number: streamed)."),
    output: Path = typer.Option(..., help="PATH.parquet: a directory of part-NNNNN.parquet "
                                "shards (a PNG grid goes beside it as PATH.png)."),
    seed: int = typer.Option(7, min=0, max=MAX_SEED,
                             help="Same seed, same images (shard by shard)."),
    batch_size: int = typer.Option(1000, help="Images per batch (and per row group)."),
    shard_size: int = typer.Option(50_000, help="Images per shard file (the last one fewer)."),
    workers: int = typer.Option(1, help="Model copies: >1 spreads shards over Ray actors "
                                "(RAY_ADDRESS or a local Ray); same images either way."),
    label: int | None = typer.Option(None, help="Conditional models: the class of every "
                                     "image (default: classes drawn by the seed)."),
) -> None:
    """Generate images from a registered generator into Parquet shards."""
    from dgm.generation.batch import generate as run
    from dgm.stages.generate import summary

    result = run(model_uri, num_samples, output, seed, batch_size, shard_size=shard_size,
                 workers=workers, label=label)
    print(summary(result))


@app.command()
def lineage(
    model_uri: str = typer.Argument(..., help="models:/NAME@ALIAS, models:/NAME/VERSION or "
                                    "runs:/RUN_ID"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of lines."),
) -> None:
    """Print what produced a model (git commit, data and config hashes) and how to redo it."""
    import json

    from dgm.tracking import lineage as lin
    from dgm.tracking.mlflow_runs import tracking_uri
    from dgm.tracking.registry import resolve_model_uri

    uri = tracking_uri()
    resolve_model_uri(model_uri, uri)
    tags = lin.lineage_of(model_uri, uri)
    if as_json:
        print(json.dumps({"model_uri": model_uri, "lineage": tags,
                          "reproduce": lin.reproduce_command(tags),
                          "warnings": lin.lineage_warnings(tags)}, indent=2, sort_keys=True))
    else:
        print(lin.format_lineage(tags))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dgm`` console script."""
    quiet_libraries()
    try:
        result = guarded(app, args=argv, standalone_mode=False)
    except typer.Abort:
        fail("aborted", 130)
    except typer.TyperException as exc:  # usage errors (typer vendors click)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        fail(message, getattr(exc, "exit_code", 2))
    if result == 130:  # typer turns KeyboardInterrupt (and so Terminated) into Exit(130)
        fail(*(("terminated", 143) if was_terminated() else ("interrupted", 130)))
    if isinstance(result, int) and result:
        sys.exit(result)


if __name__ == "__main__":
    main()
