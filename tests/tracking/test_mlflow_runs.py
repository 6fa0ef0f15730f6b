"""MLflow runs against a real SQLite store: a run whose process was killed is closed as
KILLED by the next run of its stage."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading

import pytest
from mlflow.tracking import MlflowClient

from dgm.errors import DgmError, TrackingUnreachable
from dgm.tracking.mlflow_runs import (
    HTTP_DEFAULTS,
    PROCESS_TAG,
    RunLogger,
    check_reachable,
    client,
    is_gone,
    reopen_run,
    start_child_run,
    start_run,
    this_process,
)

pytestmark = pytest.mark.skipif(this_process() is None,
                                reason="needs Linux /proc to identify processes")
GAN = {"dgm.stage": "train", "dgm.model": "gan"}
OWNER = """
import sys, time
from dgm.tracking.mlflow_runs import start_child_run, start_run
uri, model = sys.argv[1], sys.argv[2]
run = start_run("dgm-test", "killed", {}, {"dgm.stage": "train", "dgm.model": model}, uri=uri)
child = start_child_run("dgm-test", run, "trial", {"dgm.trial": "0"}, {}, {}, uri)
print(run, child, flush=True)
time.sleep(600)
"""


def killed_run(uri: str, model: str) -> tuple[str, str]:
    """(run id, child run id) left RUNNING by a process that was then SIGKILLed."""
    proc = subprocess.Popen([sys.executable, "-c", OWNER, uri, model], stdout=subprocess.PIPE,
                            text=True)
    try:
        run, child = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return run, child


def test_the_next_run_of_a_stage_closes_the_runs_whose_process_was_killed(tracking_uri):
    killed, killed_child = killed_run(tracking_uri, "gan")
    other_stage, _ = killed_run(tracking_uri, "vae")
    live = start_run("dgm-test", "live", {}, GAN, uri=tracking_uri)  # this process: alive
    c = MlflowClient(tracking_uri)
    assert c.get_run(killed).info.status == "KILLED"  # `live` was the next train@gan run
    assert c.get_run(killed_child).info.status == "KILLED"
    assert "killed" in c.get_run(killed).data.tags["dgm.end_reason"]
    assert c.get_run(other_stage).info.status == "RUNNING"  # another stage's: its own next run
    start_run("dgm-test", "next", {}, GAN, uri=tracking_uri)
    assert c.get_run(live).info.status == "RUNNING"  # its process still runs
    assert c.get_run(live).data.tags[PROCESS_TAG] == this_process()


def test_a_resumed_run_belongs_to_the_resuming_process(tracking_uri):
    killed, _ = killed_run(tracking_uri, "gan")
    reopen_run(killed, tracking_uri)  # what `dgm train --resume` does
    start_run("dgm-test", "next", {}, GAN, uri=tracking_uri)
    run = MlflowClient(tracking_uri).get_run(killed)
    assert run.info.status == "RUNNING" and run.data.tags[PROCESS_TAG] == this_process()


@pytest.mark.parametrize(("owner", "gone"), [
    ("another-host 1 1", False), ("garbage", False), (None, False)])
def test_only_processes_of_this_host_are_judged(owner, gone):
    mine = this_process()
    if owner is None:  # this process, but started at another time: a reused pid
        host, pid, started = mine.split()
        owner, gone = f"{host} {pid} {int(started) + 1}", True
    assert is_gone(owner) is gone
    assert is_gone(mine) is False


def test_child_runs_never_close_their_siblings(tracking_uri):
    parent = start_run("dgm-test", "study", {}, {"dgm.stage": "tune", "dgm.model": "gan"},
                       uri=tracking_uri)
    first = start_child_run("dgm-test", parent, "t0", {"dgm.trial": "0"}, {}, {}, tracking_uri)
    start_child_run("dgm-test", parent, "t1", {"dgm.trial": "1"}, {}, {}, tracking_uri)
    assert MlflowClient(tracking_uri).get_run(first).info.status == "RUNNING"


@pytest.fixture(scope="module")
def https_server(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 with a self-signed certificate, answering ``/health``
    with 200 (as an MLflow server does); (its URL, the certificate's PEM path)."""
    import datetime
    import http.server
    import ipaddress
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server hook
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert_path
    server.shutdown()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # asked for
@pytest.mark.parametrize("setting", [None, "insecure", "cert_path"])
def test_the_reachability_probe_honours_mlflows_tls_settings(https_server, monkeypatch,
                                                              setting):
    uri, cert = https_server
    for name in ("MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH"):
        monkeypatch.delenv(name, raising=False)
    if setting == "insecure":
        monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    elif setting == "cert_path":
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    probe = check_reachable.__wrapped__  # uncached: each setting probes again
    if setting is None:  # a self-signed certificate is refused, in one line
        with pytest.raises(DgmError) as error:
            probe(uri)
        message = str(error.value)
        assert message.startswith(f"cannot reach the MLflow tracking server at {uri}: ")
        assert "CERTIFICATE_VERIFY_FAILED" in message and "\n" not in message
    else:
        probe(uri)


def test_mlflows_http_retries_are_bounded_unless_the_user_set_them(tracking_uri, monkeypatch):
    for name in HTTP_DEFAULTS:  # set, then removed: restored after the test either way
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    client(tracking_uri)
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 3  # MLflow's own default: 7
    assert MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 1  # MLflow's own default: 2
    assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 99  # the user's setting wins


def test_a_server_that_stopped_answering_is_one_line_from_every_run_logger_call(monkeypatch):
    """What MLflow's client raises for a refused connection (matched by its wording, which
    this pins) becomes one TrackingUnreachable line naming the server."""
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the handler's API
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    server = http.server.HTTPServer(("127.0.0.1", 0), Health)  # answers the start-up probe
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{server.server_port}"
    logger = RunLogger("0" * 32, uri)
    server.shutdown()
    server.server_close()  # from here on the port refuses connections
    for call in (lambda: logger.log_metrics({"loss": 1.0}, step=1), logger.failure_reason):
        with pytest.raises(TrackingUnreachable) as error:
            call()
        message = str(error.value)
        assert message.startswith(f"cannot reach the MLflow tracking server at {uri}: ")
        assert "Connection refused" in message and "\n" not in message
