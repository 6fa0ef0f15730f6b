"""project_root and atomic_path."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dgm.errors import DgmError
from dgm.paths import atomic_path, plain_name, project_root

REPO = Path(__file__).resolve().parents[1]


def test_project_root_of_this_repo():
    assert project_root(REPO / "src" / "dgm") == REPO
    assert (project_root(REPO / "tests") / "dvc.yaml").is_file()


def test_project_root_defaults_to_cwd(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert project_root() == tmp_path.resolve()


def test_project_root_nearest_wins(tmp_path):
    (tmp_path / "dvc.yaml").write_text("")
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "dvc.yaml").write_text("")
    assert project_root(tmp_path / "inner") == (tmp_path / "inner").resolve()


def test_project_root_ignores_a_dvc_yaml_directory(tmp_path):
    (tmp_path / "dvc.yaml").write_text("")
    (tmp_path / "sub" / "dvc.yaml").mkdir(parents=True)
    assert project_root(tmp_path / "sub") == tmp_path.resolve()


def test_project_root_without_marker_is_start(tmp_path):
    # tmp_path lives outside any DVC project.
    assert project_root(tmp_path) == tmp_path.resolve()


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_file_created(tmp_path):
    final = tmp_path / "new" / "out.txt"
    with atomic_path(final) as tmp:
        assert tmp.name == "out.txt" and tmp.parent.parent == final.parent
        assert not final.exists()
        tmp.write_text("hello")
        assert not final.exists()  # invisible until the block ends
    assert final.read_text() == "hello"
    assert entries(final.parent) == ["out.txt"]


def test_atomic_file_replaces_existing(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with atomic_path(final) as tmp:
        tmp.write_text("new")
        assert final.read_text() == "old"
    assert final.read_text() == "new"
    assert entries(tmp_path) == ["out.txt"]


def test_atomic_dir_replaces_existing(tmp_path):
    final = tmp_path / "out"
    (final / "stale").mkdir(parents=True)
    (final / "stale" / "x").write_text("x")
    (final / "keep.txt").write_text("old")
    with atomic_path(final) as tmp:
        (tmp / "part").mkdir(parents=True)
        (tmp / "part" / "a.txt").write_text("a")
        (tmp / "keep.txt").write_text("new")
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == [
        "keep.txt", "part", "part/a.txt"]
    assert (final / "keep.txt").read_text() == "new"
    assert entries(tmp_path) == ["out"]


def test_atomic_exception_keeps_old_file(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert final.read_text() == "old"
    assert entries(tmp_path) == ["out.txt"]


def test_atomic_exception_keeps_old_dir(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "a.txt").write_text("old")
    with pytest.raises(KeyError):
        with atomic_path(final) as tmp:
            tmp.mkdir()
            (tmp / "a.txt").write_text("half")
            (tmp / "b.txt").write_text("half")
            raise KeyError("x")
    assert entries(final) == ["a.txt"]
    assert (final / "a.txt").read_text() == "old"
    assert entries(tmp_path) == ["out"]


def test_atomic_exception_creates_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "out") as tmp:
            tmp.write_text("x")
            raise ValueError
    assert entries(tmp_path) == []


def test_atomic_block_creating_nothing_keeps_old_dir(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "a.txt").write_text("old")
    with pytest.raises(FileNotFoundError):
        with atomic_path(final):
            pass
    assert (final / "a.txt").read_text() == "old"


@pytest.mark.parametrize("name", ["digits", "fashion-mnist", "gan_2", "v1.2", "A" * 100])
def test_plain_names_pass(name):
    assert plain_name(name, "dataset") == name


@pytest.mark.parametrize("name", ["", "..", "../x", "a/b", "/abs", ".hidden", "a\\b", "x y",
                                  "A" * 101, "caf\u00e9", "a\x00b"])
def test_names_that_would_be_paths_are_refused(name):
    with pytest.raises(DgmError, match="dataset .* is not a plain name"):
        plain_name(name, "dataset")


WRITER = """
import sys, time
from pathlib import Path
from dgm.paths import atomic_path
from dgm.stages.entry import guarded

def write():
    with atomic_path(Path(sys.argv[1])) as tmp:
        tmp.mkdir()
        (tmp / "part-00000.parquet").write_text("half")
        print("writing", flush=True)
        time.sleep(60)

guarded(write)
"""


def start_writer(out: Path, blocked: frozenset = frozenset()) -> subprocess.Popen:
    """The writer, started with ``blocked`` signals masked (a mask is inherited)."""
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, blocked))
    assert child.stdout.readline().strip() == "writing", child.stderr.read()
    return child


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("blocked", [False, True], ids=["", "inherited-mask"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_writer_cleans_up_and_keeps_the_previous_output(tmp_path, sig, blocked):
    """Also when the parent started it with the signals blocked (as multiprocessing's
    resource tracker blocks them while it spawns): the mask would keep them pending."""
    out = tmp_path / "samples.parquet"
    out.mkdir()
    (out / "part-00000.parquet").write_text("previous")
    mask = frozenset({signal.SIGINT, signal.SIGTERM} if blocked else ())
    child = start_writer(out, mask)
    assert leftovers(out)
    child.send_signal(sig)
    try:
        _, err = child.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # say why: the signal blocked, ignored or caught
        status = Path(f"/proc/{child.pid}/status").read_text()
        child.kill()
        pytest.fail("the writer outlived the signal: " + " ".join(
            line for line in status.splitlines() if line.startswith(("SigBlk", "SigIgn",
                                                                      "SigCgt", "SigPnd"))))
    assert child.returncode == (143 if sig == signal.SIGTERM else 130)
    assert err.strip() == ("dgm: error: terminated" if sig == signal.SIGTERM
                           else "dgm: error: interrupted")
    assert not leftovers(out)
    assert (out / "part-00000.parquet").read_text() == "previous"


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    out = tmp_path / "samples.parquet"
    child = start_writer(out)
    child.kill()
    child.wait(timeout=30)
    stale = leftovers(out)
    assert len(stale) == 1 and not out.exists()
    live = start_writer(out)  # a live writer's temporary is not touched by another write
    try:
        with atomic_path(out) as tmp:
            tmp.write_text("done")
        assert out.read_text() == "done"
        assert not stale[0].exists() and len(leftovers(out)) == 1  # the live writer's
    finally:
        live.kill()
        live.wait(timeout=30)


def test_an_experiment_copy_keeps_its_stores_in_the_repository(tmp_path, monkeypatch):
    from dgm.paths import home_root
    from dgm.tracking.mlflow_runs import tracking_uri

    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert home_root(copy) == copy  # not run by DVC: the project is where it is
    monkeypatch.setenv("DVC_ROOT", str(repo))  # what DVC sets for `dvc exp run --temp`
    assert home_root(copy) == repo.resolve()
    assert tracking_uri(copy) == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    assert home_root(repo) == repo  # the workspace run: DVC_ROOT is the project itself
    elsewhere = tmp_path / "other"
    assert home_root(elsewhere) == elsewhere  # a DVC_ROOT of another project: ignored
