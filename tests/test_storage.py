"""``cluster.storage`` locations and the pieces of dgm.cluster that let nodes share nothing
with the driver: shipped directories, the driver-node proxy, the code version, joining."""

from __future__ import annotations

import pytest

from dgm import cluster
from dgm.config import Params
from dgm.errors import DgmError
from dgm.storage import ClusterConfig, join, latest_run_name, list_dirs, storage_location


def test_storage_locations(tmp_path):
    assert storage_location("s3://bucket/x/") == "s3://bucket/x"
    assert storage_location("file:///mnt/shared/ray") == "/mnt/shared/ray"
    assert storage_location("runs", root=tmp_path) == str(tmp_path / "runs")
    assert storage_location(tmp_path / "abs") == str(tmp_path / "abs")
    assert join("s3://b/x/", "run", "ckpt") == "s3://b/x/run/ckpt"


def test_cluster_section_defaults_to_local_and_refuses_blank():
    assert Params.model_validate({}).cluster.storage is None
    assert ClusterConfig(storage="s3://b/dgm").storage == "s3://b/dgm"
    with pytest.raises(ValueError, match="blank"):
        ClusterConfig(storage="  ")
    with pytest.raises(ValueError):  # the old settings are gone, not ignored
        Params.model_validate({"tune": {"storage_path": "s3://b"}})


def test_list_dirs_and_latest_run_on_a_path(tmp_path):
    (tmp_path / "digits-gan-20260101-000000").mkdir()
    (tmp_path / "digits-gan-20260102-000000").mkdir()
    (tmp_path / "file").write_text("x")
    assert sorted(name for name, _ in list_dirs(str(tmp_path))) == [
        "digits-gan-20260101-000000", "digits-gan-20260102-000000"]
    assert list_dirs(str(tmp_path / "missing")) == []


def test_a_stale_ray_marker_is_not_joined(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster.tempfile, "gettempdir", lambda: str(tmp_path))
    assert cluster.running_cluster_address() is None  # no marker
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")  # nothing listens
    assert cluster.running_cluster_address() is None


def test_code_version_is_a_digest_of_the_source_and_a_mismatch_is_refused():
    version = cluster.code_version()
    assert len(version) == 12 and version == cluster.code_version()
    cluster.check_code_version(version, "a worker")
    with pytest.raises(DgmError, match=r"^a worker on node \S+ runs dgm code \w+, the "
                                       r"driver's is 000000000000: ship the code"):
        cluster.check_code_version("000000000000", "a worker")


def test_shipped_directory_is_used_in_place_or_copied_once(ray_session, tmp_path,
                                                            monkeypatch):
    source = tmp_path / "data"
    (source / "train").mkdir(parents=True)
    (source / "train" / "part-0.parquet").write_bytes(b"\x00" * 1000)
    (source / "meta.json").write_text("{}")
    import ray

    shipped = ray.get(ray.put(cluster.ship_directory(source)))  # as in a worker's job
    assert shipped.materialize() == source  # the same files here: used in place

    monkeypatch.setattr(cluster.tempfile, "gettempdir", lambda: str(tmp_path / "node-tmp"))
    (source / "meta.json").write_text('{"changed": 1}')  # this "node" sees other files
    copy = shipped.materialize()
    assert copy == tmp_path / "node-tmp" / "dgm-shipped" / shipped.digest
    assert (copy / "meta.json").read_text() == "{}"
    assert (copy / "train" / "part-0.parquet").read_bytes() == b"\x00" * 1000
    (copy / "meta.json").write_text("kept")  # made once per digest, then reused
    assert shipped.materialize() == copy and (copy / "meta.json").read_text() == "kept"
    with pytest.raises(DgmError, match="not a directory"):
        cluster.ship_directory(tmp_path / "missing")


def test_driver_proxy_calls_an_actor_on_the_drivers_node(ray_session):
    import string

    import ray

    proxy = cluster.on_driver_node(string.Template, "$a-$b")  # every worker imports it
    assert proxy.substitute(a=1, b=2) == "1-2"
    travelled = ray.get(ray.put(proxy))  # as in a worker's job: the same actor
    assert travelled.safe_substitute(a=3) == "3-$b"
    assert cluster.single_node()
    with pytest.raises(AttributeError):
        proxy.__wrapped__  # noqa: B018 - dunder lookups never reach the actor


def test_latest_run_name_picks_the_newest_with_the_prefix(tmp_path):
    import os

    for i, name in enumerate(["digits-gan-1", "digits-vae-2", "digits-gan-3"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    assert latest_run_name(str(tmp_path), "digits-gan-") == "digits-gan-3"
    assert latest_run_name(str(tmp_path), "digits-rbm-") is None
    assert latest_run_name(str(tmp_path / "missing"), "digits-") is None
