"""Batch generation at scale: a random-weight DCGAN for MNIST (1×28×28), registered as an
MLflow pyfunc in a temporary SQLite store, then in one run:

``throughput_ratio`` = samples/s of ``dgm.generation`` (in-process, workers 1; model loaded,
shards streamed to Parquet) ÷ samples/s of the raw generator (``sample_uint8``: forward pass
plus uint8 conversion), same batch size, best of ``--repeats`` (goal ≥ 0.9).
``peak_rss_mb``: peak RSS of a separate ``dgm generate`` process streaming ``--num-samples``
(goal ≤ 1500). ``samples_per_s_workers_1`` / ``_2``: ``dgm.generation`` with 1 and 2 workers
(2: Ray actors, one model copy each; Ray started beforehand, actor start-up included).
``serve_p50_ms`` / ``serve_p99_ms``: latency of REST requests for 64 samples to a real
``mlflow models serve -m models:/dgm-mnist-gan@champion`` on loopback.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, parser

from dgm.generation.batch import generate
from dgm.models.gan import GANConfig
from dgm.models.generator import batch_seed, sample_uint8, save_generator
from dgm.models.registry import build_model

MODEL_NAME = "dgm-mnist-gan"


def register(work: Path, width: int) -> tuple[str, object]:
    """A random DCGAN registered as ``models:/dgm-mnist-gan@champion``; (uri, the model)."""
    from dgm.tracking.mlflow_runs import start_run, tracking_uri
    from dgm.tracking.pyfunc import log_generator
    from dgm.tracking.registry import register_generator

    model = build_model(GANConfig(width=width), (1, 28, 28), seed=0).eval()
    path = save_generator(model, work / "generator.pt",
                          extra={"dataset": "mnist", "class_names": list("0123456789")})
    uri = tracking_uri()
    run_id = start_run("dgm-bench", "generation", {}, {}, uri=uri)
    register_generator(log_generator(run_id, path, (1, 28, 28), uri), MODEL_NAME, "fid", 1.0)
    return f"models:/{MODEL_NAME}@champion", model


def raw_speed(model, num_samples: int, batch_size: int) -> float:
    """Samples/s of the bare generator: seeded batches, forward pass, uint8 conversion."""
    started = time.perf_counter()
    for index, start in enumerate(range(0, num_samples, batch_size)):
        sample_uint8(model, min(batch_size, num_samples - start), batch_seed(0, index))
    return num_samples / (time.perf_counter() - started)


def throughput(model_uri: str, model, work: Path, num_samples: int, batch_size: int,
               repeats: int) -> dict:
    """``throughput_ratio`` and both speeds, best of ``repeats`` (interleaved)."""
    sample_uint8(model, batch_size, 0)  # warm-up
    raw, ours = [], []
    for _ in range(repeats):
        raw.append(raw_speed(model, num_samples, batch_size))
        ours.append(generate(model_uri, num_samples, work / "ratio.parquet", seed=0,
                             batch_size=batch_size, progress=False).samples_per_s)
    return {"raw_samples_per_s": round(max(raw)), "samples_per_s_workers_1": round(max(ours)),
            "throughput_ratio": round(max(ours) / max(raw), 3)}


def peak_rss(model_uri: str, work: Path, num_samples: int, batch_size: int) -> dict:
    """Peak RSS (MB) and wall time of a ``dgm generate`` process (run before any other child,
    so that RUSAGE_CHILDREN's maximum is its own)."""
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "dgm"), "generate", "--model-uri",
                    model_uri, "--num-samples", str(num_samples), "--batch-size",
                    str(batch_size), "--output", str(work / "rss.parquet"), "--seed", "0"],
                   check=True, stdout=subprocess.DEVNULL, env=os.environ.copy())
    seconds = time.perf_counter() - started
    rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_rss_mb": round(rss_kb / 1024, 1), "cli_num_samples": num_samples,
            "cli_seconds": round(seconds, 2), "cli_samples_per_s": round(num_samples / seconds)}


def workers_speed(model_uri: str, work: Path, num_samples: int, batch_size: int,
                  shard_size: int) -> dict:
    """Samples/s with 2 Ray actors (Ray started outside the timing)."""
    from dgm.cluster import ensure_ray

    ensure_ray()
    result = generate(model_uri, num_samples, work / "workers.parquet", seed=0,
                      batch_size=batch_size, shard_size=shard_size, workers=2, progress=False)
    return {"samples_per_s_workers_2": round(result.samples_per_s)}


def serve_latency(model_uri: str, uri: str, requests: int, num_samples: int = 64) -> dict:
    """p50/p99 milliseconds of REST requests for ``num_samples`` images to a real
    ``mlflow models serve`` of ``model_uri`` on loopback (after 3 warm-up requests)."""
    import json
    import socket
    import subprocess
    import sys
    import tempfile
    import urllib.request

    import numpy as np

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(Path(tempfile.mkdtemp()) / "serve.log", "wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", model_uri,
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri,  # uvicorn from this environment
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    body = json.dumps({"inputs": {"num_samples": num_samples, "seed": 0}}).encode()
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("generation: mlflow models serve did not start "
                                     f"({log.name})") from None
                time.sleep(0.5)
        latencies = []
        for i in range(requests + 3):
            request = urllib.request.Request(f"{base}/invocations", body,
                                             {"Content-Type": "application/json"})
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as response:
                images = json.loads(response.read())["predictions"]
            if i >= 3:
                latencies.append(1000 * (time.perf_counter() - started))
            assert len(images) == num_samples
        return {"serve_p50_ms": round(float(np.percentile(latencies, 50)), 2),
                "serve_p99_ms": round(float(np.percentile(latencies, 99)), 2),
                "serve_requests": requests, "serve_num_samples": num_samples}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--num-samples", type=int, default=1_000_000,
                   help="samples streamed by the dgm generate process (peak RSS)")
    p.add_argument("--speed-samples", type=int, default=20_000,
                   help="samples per throughput and workers measurement")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--width", type=int, default=64, help="DCGAN width")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--serve-requests", type=int, default=200,
                   help="REST requests of 64 samples to `mlflow models serve`")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="dgm-bench-generation-") as tmp:
        work = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        model_uri, model = register(work, args.width)
        figures = {"model": f"dcgan-w{args.width}-1x28x28", "batch_size": args.batch_size,
                   "speed_samples": args.speed_samples}
        figures |= peak_rss(model_uri, work, args.num_samples, args.batch_size)
        figures |= throughput(model_uri, model, work, args.speed_samples, args.batch_size,
                              args.repeats)
        figures |= workers_speed(model_uri, work, args.speed_samples, args.batch_size,
                                 shard_size=max(args.batch_size, args.speed_samples // 8))
        figures |= serve_latency(model_uri, os.environ["MLFLOW_TRACKING_URI"],
                                 args.serve_requests)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
