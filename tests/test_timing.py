"""dgm.timing: phases sum wall time once however nested; the profile line a stage writes."""

from __future__ import annotations

import json
import time

import pytest

from dgm import timing


@pytest.fixture(autouse=True)
def fresh_phases(monkeypatch):
    monkeypatch.setattr(timing, "_seconds", {})
    monkeypatch.setattr(timing, "_depth", {})


def test_a_nested_phase_of_the_same_name_counts_once():
    @timing.timed("io")
    def inner():
        time.sleep(0.05)

    with timing.phase("io"):
        inner()
        time.sleep(0.05)
    inner()
    seconds = timing.phases()["io"]
    assert 0.15 <= seconds < 0.3  # 0.1 + 0.05, not 0.2 + 0.05


def test_a_failing_block_still_counts_and_unwinds():
    with pytest.raises(ValueError), timing.phase("x"):
        time.sleep(0.02)
        raise ValueError
    with timing.phase("x"):
        pass
    assert 0.02 <= timing.phases()["x"] < 0.2
    assert timing._depth["x"] == 0


def test_the_profile_is_one_json_line_per_stage_and_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("DGM_PROFILE", raising=False)
    timing.add("mlflow", 1.5)
    timing.write_profile("train@gan", 2.0, 10.0)  # not asked: nothing anywhere
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("DGM_PROFILE", str(tmp_path / "p.jsonl"))
    timing.write_profile("train@gan", 2.0, 10.0)
    timing.write_profile("report", None, 1.0)
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert lines == [{"stage": "train@gan", "startup_s": 2.0, "total_s": 10.0, "mlflow_s": 1.5},
                     {"stage": "report", "startup_s": None, "total_s": 1.0, "mlflow_s": 1.5}]


def test_process_age_is_this_processes_age():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import time; time.sleep(0.5); "
                          "from dgm.timing import process_age; print(process_age())"],
                         capture_output=True, text=True, check=True).stdout
    assert 0.5 <= float(out) < 5.0
