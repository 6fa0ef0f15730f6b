"""Batch generation from a registered generator into a directory of Parquet shards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import RAY_WORKER_LINE, environment
from PIL import Image

from dgm.cli import main
from dgm.data.parquet import read_images, read_meta, schema
from dgm.errors import DgmError
from dgm.generation.batch import generate, shard_counts, shard_name
from dgm.models.generator import save_generator
from dgm.models.registry import build_model
from dgm.models.vae import VAEConfig
from dgm.paths import sole_writer
from dgm.tracking.mlflow_runs import start_run
from dgm.tracking.pyfunc import log_generator
from dgm.tracking.registry import register_generator


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module's champions (the tests only read them), exported as
    MLFLOW_TRACKING_URI while the module runs."""
    directory = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    with environment(MLFLOW_TRACKING_URI=uri):
        yield directory, uri


def register(store, name: str, conditional: bool) -> str:
    directory, uri = store
    model = build_model(VAEConfig(width=8, latent_dim=4, conditional=conditional), (1, 8, 8),
                        seed=0)
    path = save_generator(model, directory / f"{name}.pt",
                          extra={"dataset": "digits", "class_names": list("0123456789")})
    run_id = start_run("dgm-test", name, {}, {}, uri=uri)
    register_generator(log_generator(run_id, path, (1, 8, 8), uri), name, "fid", 1.0)
    return f"models:/{name}@champion"


@pytest.fixture(scope="module")
def champion(store):
    return register(store, "dgm-digits-vae", conditional=False)


@pytest.fixture(scope="module")
def conditional_champion(store):
    return register(store, "dgm-digits-cvae", conditional=True)


def images(path) -> list[bytes]:
    return pq.read_table(path, columns=["image"]).column("image").to_pylist()


def run(champion, tmp_path, name, num_samples, seed=7, **kw):
    kw = {"batch_size": 400, "shard_size": 1000, "progress": False, **kw}
    return generate(champion, num_samples, tmp_path / name, seed=seed, **kw)


def test_shards_counts_schema_and_order(champion, tmp_path):
    result = run(champion, tmp_path, "a.parquet", 2500)
    assert result.output.is_dir() and result.shards == 3
    files = sorted(result.output.iterdir())
    assert [f.name for f in files] == [f"part-{k:05d}.parquet" for k in range(3)]
    meta = read_meta(result.output)
    assert (meta.name, meta.height, meta.width, meta.channels) == ("digits", 8, 8, 1)
    assert meta.class_names == tuple("0123456789")
    for file, rows, groups in zip(files, [1000, 1000, 500], [3, 3, 2], strict=True):
        pf = pq.ParquetFile(file)
        assert pf.schema_arrow.equals(schema(meta, with_seed=True), check_metadata=True)
        assert (pf.metadata.num_rows, pf.metadata.num_row_groups) == (rows, groups)
    table = pq.read_table(result.output)
    assert table.num_rows == ds.dataset(result.output).count_rows() == 2500
    assert table.column("image").to_pylist() == sum((images(f) for f in files), [])
    assert table.column("seed").to_pylist() == [7] * 2500
    assert table.column("label").null_count == 2500
    data = read_images(result.output).images
    assert data.shape == (2500, 8, 8, 1) and data.std() > 0
    grid = np.asarray(Image.open(result.grid))
    assert result.grid == tmp_path / "a.png" and grid.ndim == 2 and grid.shape[0] > 8
    assert sorted(p.name for p in tmp_path.iterdir() if "a." in p.name) == ["a.parquet", "a.png"]


def test_same_seed_same_images_other_seed_differs(champion, tmp_path):
    a = images(run(champion, tmp_path, "a.parquet", 1500).output)
    assert images(run(champion, tmp_path, "b.parquet", 1500).output) == a
    c = images(run(champion, tmp_path, "c.parquet", 1500, seed=8).output)
    assert len(c) == 1500 and c != a


def test_shard_depends_only_on_seed_and_index(champion, tmp_path):
    """Shard k is the same in a run of 3 000 and of 5 000 samples."""
    small = run(champion, tmp_path, "small.parquet", 3000).output
    large = run(champion, tmp_path, "large.parquet", 5000).output
    for k in range(3):
        assert images(small / shard_name(k, 3)) == images(large / shard_name(k, 5))
    assert images(small / shard_name(0, 3)) != images(small / shard_name(1, 3))


def test_replaces_an_existing_output(champion, tmp_path):
    out = tmp_path / "s.parquet"
    out.write_bytes(b"an older single-file output")
    run(champion, tmp_path, "s.parquet", 300, shard_size=100)
    run(champion, tmp_path, "s.parquet", 150, shard_size=100)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(out).num_rows == 150
    assert sorted(p.name for p in tmp_path.iterdir() if "s." in p.name) == ["s.parquet", "s.png"]


DGM = Path(sys.executable).parent / "dgm"
BUSY = "is being written by another process; wait for it to finish or choose another output"


def start_generate(store, champion, out: Path, seed: int) -> subprocess.Popen:
    """``dgm generate`` in a process of its own (the real CLI, as a second user would)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": store[1], "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [DGM, "generate", "--model-uri", champion, "--num-samples", "40000", "--shard-size",
         "4000", "--batch-size", "400", "--seed", str(seed), "--output", out], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_second_writer_of_one_output_is_refused_in_one_line(store, champion, tmp_path):
    out = tmp_path / "s.parquet"
    run(champion, tmp_path, "s.parquet", 200, shard_size=100)
    before = images(out)
    with sole_writer(out):  # another process's generate, still writing
        child = start_generate(store, champion, out, seed=1)
        _, err = child.communicate(timeout=120)
    assert child.returncode == 2
    assert err == f"dgm: error: {out} {BUSY}\n"
    assert images(out) == before  # the first writer's output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet", "s.png"]  # no lock left


def test_two_generates_to_one_output_leave_one_complete_result(store, champion, tmp_path):
    """Started together: whichever order they reach the output in, it ends as exactly one
    run's shards and that run's grid; a refused run says so in one line."""
    references = {seed: run(champion, tmp_path / f"ref{seed}", "r.parquet", 40000, seed=seed,
                            shard_size=4000) for seed in (1, 2)}
    out = tmp_path / "both" / "s.parquet"
    children = {seed: start_generate(store, champion, out, seed) for seed in (1, 2)}
    outcomes = {seed: (child.wait(timeout=240), child.stderr.read())
                for seed, child in children.items()}
    for child in children.values():
        child.stdout.close()
        child.stderr.close()
    assert any(rc == 0 for rc, _ in outcomes.values()), outcomes
    for rc, err in outcomes.values():
        assert (rc, err) in ((0, ""), (2, f"dgm: error: {out} {BUSY}\n")), (rc, err)
    shards = sorted(p.name for p in out.iterdir())
    assert shards == [shard_name(k, 10) for k in range(10)]
    grid = np.asarray(Image.open(out.with_suffix(".png")))
    matches = [seed for seed, ref in references.items()
               if images(out) == images(ref.output)
               and np.array_equal(grid, np.asarray(Image.open(ref.grid)))]
    assert len(matches) == 1  # one run's shards and grid, not a mix
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.parquet", "s.png"]


def test_shard_helpers():
    assert shard_counts(2500, 1000) == [1000, 1000, 500]
    assert shard_counts(1000, 1000) == [1000]
    assert shard_name(7, 10) == "part-00007.parquet"
    assert shard_name(7, 1_000_001) == "part-0000007.parquet"


def test_workers_give_the_same_images(champion, tmp_path, ray_session):
    one = run(champion, tmp_path, "one.parquet", 6000, batch_size=500, workers=1)
    two = run(champion, tmp_path, "two.parquet", 6000, batch_size=500, workers=2)
    assert two.shards == 6 and sorted(p.name for p in two.output.iterdir()) == [
        shard_name(k, 6) for k in range(6)]
    assert images(two.output) == images(one.output)
    assert np.array_equal(np.asarray(Image.open(two.grid)), np.asarray(Image.open(one.grid)))


@pytest.mark.parametrize(("args", "fragment"), [
    (["--num-samples", "0"], "--num-samples must be positive, got 0"),
    (["--num-samples", "-3"], "--num-samples must be positive, got -3"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--shard-size", "-1"], "--shard-size must be positive"),
    (["--workers", "0"], "--workers must be positive"),
    (["--output", "x.csv"], "--output must end in .parquet"),
    (["--workers", "3"], "--workers 3: 3 CPUs needed, but the Ray cluster has 2"),
    (["--model-uri", "models:/dgm-digits-gan@champion"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(tracking_uri, tmp_path, capsys, request, args,
                                          fragment):
    if "--workers" in args and int(args[1]) > 1:
        request.getfixturevalue("ray_session")
    before = set(tmp_path.iterdir())
    options = {"--model-uri": "models:/dgm-digits-vae@champion", "--num-samples": "100",
               "--output": str(tmp_path / "x.parquet")}
    options.update({args[0]: args[1] if args[0] != "--output" else str(tmp_path / args[1])})
    with pytest.raises(SystemExit) as exc:
        main(["generate", *(x for kv in options.items() for x in kv)])
    assert exc.value.code == 2
    # without what the session's Ray forwards from an earlier test's actors, late
    # ("(ShardWriter pid=…) …"): this command's own stderr
    err = "".join(line for line in capsys.readouterr().err.splitlines(keepends=True)
                  if not RAY_WORKER_LINE.match(line))
    assert err.startswith("dgm: error: ") and fragment in err and err.count("\n") == 1
    assert set(tmp_path.iterdir()) == before  # no output, grid or temporary directory


def test_library_call_refuses_non_positive_counts(champion, tmp_path):
    with pytest.raises(DgmError, match="must be positive"):
        generate(champion, 0, tmp_path / "x.parquet", seed=1, progress=False)
    assert not (tmp_path / "x.parquet").exists()


def test_a_remote_dgm_error_comes_back_as_one_line(ray_session):
    from dgm.generation.batch import _ray_errors

    @ray_session.remote(num_cpus=0)
    def fail() -> None:
        raise DgmError("models:/x@champion is not a dgm generator")

    with pytest.raises(DgmError) as exc, _ray_errors():
        ray_session.get(fail.remote())
    assert type(exc.value) is DgmError and str(exc.value) == (
        "models:/x@champion is not a dgm generator")


def test_a_label_asks_a_conditional_model_for_one_class(conditional_champion, tmp_path):
    three = run(conditional_champion, tmp_path, "three.parquet", 900, label=3)
    table = pq.read_table(three.output, columns=["label"])
    assert table.column("label").to_pylist() == [3] * 900
    free = run(conditional_champion, tmp_path, "free.parquet", 900)
    assert images(three.output) != images(free.output)
    assert images(run(conditional_champion, tmp_path, "again.parquet", 900, label=3).output) \
        == images(three.output)


@pytest.mark.parametrize(("which", "label", "fragment"), [
    ("conditional_champion", "10", "--label 10 is outside the classes 0..9"),
    ("conditional_champion", "-1", "--label -1 is outside the classes 0..9"),
    ("champion", "3", "--label 3: this generator is not conditional"),
])
def test_a_bad_label_is_one_line_and_writes_nothing(request, tmp_path, capsys, which, label,
                                                    fragment):
    model_uri = request.getfixturevalue(which)
    before = set(tmp_path.iterdir())
    capsys.readouterr()  # the fixture's store set-up
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model-uri", model_uri, "--num-samples", "100", "--label", label,
              "--output", str(tmp_path / "x.parquet")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("dgm: error: ") and fragment in err and err.count("\n") == 1
    assert set(tmp_path.iterdir()) == before
