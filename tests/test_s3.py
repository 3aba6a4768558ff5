"""S3 storage against a real S3 HTTP endpoint: moto's server on 127.0.0.1, boto3 pointed at
it with endpoint_url. Faults (403, 5xx, cut-off bodies) come from a small fault-injecting
HTTP proxy between the client and moto, which also logs every request it forwards."""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.s3 import (
    FAKE_KEY_ID,
    FAKE_SECRET,
    FAKE_TOKEN,
    REGION,
    cli_env,
    storage_config,
)
from worker.errors import JobError
from worker.outputs import publish_outputs
from worker.sources import s3

#: every test here runs with planted AWS credentials and no AWS config (tests/helpers/s3.py)
pytestmark = pytest.mark.usefixtures("aws_env")


# ------------------------------------------------------------------ servers


def _error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>FAULT</RequestId></Error>"
    ).encode()


class FaultProxy:
    """Forwards HTTP requests to moto; injects faults from a rule list; logs every request.

    A rule: dict(method=..., path=substring, status=..., code=..., times=n, mode="error" |
    "truncate"). Rules apply in order, each `times` times. log entries:
    dict(method, path, start, end, status, fault).
    """

    def __init__(self, upstream: str):
        self.upstream = upstream.removeprefix("http://")
        self.rules: list[dict] = []
        self.log: list[dict] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline().strip():
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self):
                start = time.monotonic()
                body = self._body()
                rule = proxy._match(self.command, self.path)
                entry = {"method": self.command, "path": self.path, "start": start}
                if rule is not None and rule.get("mode", "error") == "error":
                    payload = _error_xml(rule["code"], rule.get("message", rule["code"]))
                    entry.update(status=rule["status"], fault=rule["code"])
                    proxy._record(entry)
                    self.send_response(rule["status"])
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                else:
                    headers = {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() not in ("transfer-encoding", "connection", "content-length")
                    }
                    headers["Content-Length"] = str(len(body))
                    conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    conn.close()
                    # Logged before the client sees the answer; `end` = upstream finished.
                    entry["status"] = resp.status
                    if rule is not None:
                        entry["fault"] = "truncate"
                    proxy._record(entry)
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
                        self.end_headers()
                    elif rule is not None:  # truncate: announce the full body, send half
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                    else:
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _record(self, entry: dict) -> None:
        entry["end"] = time.monotonic()
        with self.lock:
            self.log.append(entry)

    def _match(self, method: str, path: str) -> dict | None:
        with self.lock:
            for rule in self.rules:
                if rule.get("times", 1) <= 0:
                    continue
                if rule.get("method", method) == method and rule.get("path", "") in path:
                    rule["times"] = rule.get("times", 1) - 1
                    return rule
        return None

    def requests(self, method: str | None = None, path: str = "") -> list[dict]:
        with self.lock:
            return [
                e
                for e in self.log
                if (method is None or e["method"] == method) and path in e["path"]
            ]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(moto_endpoint):
    p = FaultProxy(moto_endpoint)
    yield p
    p.close()


# ------------------------------------------------------------------ environment and buckets


def _seed(admin, bucket: str, keys: list[str]) -> None:
    """Put many small objects. Straight into the running server's in-process store when
    moto's internals allow it (1,000 HTTP PUTs take ~15 s on 2 cores); else over HTTP."""
    try:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        if bucket in backend.buckets:
            for key in keys:
                backend.put_object(bucket, key, b"x")
            return
    except (ImportError, AttributeError, KeyError, TypeError):
        pass
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: admin.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))


def _assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in (FAKE_SECRET, FAKE_TOKEN, FAKE_KEY_ID):
            assert secret not in text
        assert "X-Amz-Signature" not in text and "Signature=" not in text


def _full_text(err: BaseException) -> str:
    return "".join(traceback.format_exception(type(err), err, err.__traceback__))


# ------------------------------------------------------------------ listing


def test_listing_pages_past_1000_objects_sorted_by_relative_key(
    admin, bucket, moto_endpoint, proxy
):
    keys = [f"many/img_{i:05d}.png" for i in range(1150)]
    keys += [f"many/sub/deep_{i}.JPG" for i in range(3)]
    noise = ["many/notes.txt", "many/.hidden.png", "many/folder/", "many-other/x.png", "x.png"]

    _seed(admin, bucket, keys + noise)

    items = s3.list_items(f"s3://{bucket}/many", (".png", ".jpg"), storage_config(proxy.endpoint))
    expected = sorted(k.removeprefix("many/") for k in keys)
    assert [it.id for it in items] == expected
    assert len(items) == 1153
    assert items[0].uri == f"s3://{bucket}/many/img_00000.png"
    assert any(it.id == "sub/deep_0.JPG" for it in items)
    # 1,158 keys under the prefix: S3 pages at 1,000, so two list requests.
    assert len(proxy.requests("GET", "list-type=2")) == 2

    # The same through the dispatcher, with a trailing slash on the root.
    from worker.sources import list_images

    again = list_images(f"s3://{bucket}/many/", storage_config(moto_endpoint))
    assert [it.id for it in again] == expected


def test_empty_prefix_and_missing_bucket_are_job_errors(bucket, moto_endpoint):
    storage = storage_config(moto_endpoint)
    with pytest.raises(JobError, match=rf"s3://{bucket}/nothing-here: no objects"):
        s3.list_items(f"s3://{bucket}/nothing-here", (".png",), storage)
    root = "s3://no-such-bucket-4242/data"
    with pytest.raises(JobError) as info:
        s3.list_items(root, (".png",), storage)
    assert root in str(info.value) and "does not exist" in str(info.value)


# ------------------------------------------------------------------ reads and writes


def test_round_trip_exists_upload_and_read_many(bucket, moto_endpoint, tmp_path):
    storage = storage_config(moto_endpoint)
    uri = f"s3://{bucket}/a/b/data.bin"
    payload = os.urandom(3 * s3.CHUNK_SIZE + 17)  # several streamed chunks
    assert not s3.exists(uri, storage)
    s3.write_bytes(uri, payload, storage)
    assert s3.exists(uri, storage)
    assert s3.read_bytes(uri, storage) == payload

    local = tmp_path / "report.pdf"
    local.write_bytes(b"%PDF-1.7 fake")
    s3.upload_file(local, f"s3://{bucket}/up/report.pdf", storage)
    assert s3.read_bytes(f"s3://{bucket}/up/report.pdf", storage) == b"%PDF-1.7 fake"

    # The dispatcher in worker.sources routes s3:// here.
    from worker import sources

    sources.write_bytes(f"s3://{bucket}/c.txt", b"hello", storage)
    assert sources.read_bytes(f"s3://{bucket}/c.txt", storage) == b"hello"

    uris = [f"s3://{bucket}/many/{i}.bin" for i in range(40)]
    for i, u in enumerate(uris):
        s3.write_bytes(u, str(i).encode(), storage)
    got = list(s3.read_many(uris, storage, max_workers=4))
    assert [u for u, _ in got] == uris
    assert [d for _, d in got] == [str(i).encode() for i in range(40)]

    missing = f"s3://{bucket}/many/missing.bin"
    got = list(s3.read_many([uris[0], missing, uris[1]], storage, return_exceptions=True))
    assert got[0][1] == b"0" and got[2][1] == b"1"
    assert isinstance(got[1][1], s3.S3NotFoundError)
    assert isinstance(got[1][1], FileNotFoundError)  # callers skip it like a missing file
    with pytest.raises(s3.S3NotFoundError, match=missing):
        list(s3.read_many([uris[0], missing], storage))


def test_missing_object_and_missing_bucket_name_the_uri(bucket, moto_endpoint):
    storage = storage_config(moto_endpoint)
    uri = f"s3://{bucket}/embeddings/primary.npy"
    with pytest.raises(s3.S3NotFoundError) as info:
        s3.read_bytes(uri, storage)
    assert uri in str(info.value) and "not found" in str(info.value)

    uri = "s3://no-such-bucket-4242/embeddings/primary.npy"
    with pytest.raises(JobError) as info:
        s3.read_bytes(uri, storage)
    assert not isinstance(info.value, s3.S3NotFoundError)
    assert uri in str(info.value) and "bucket 'no-such-bucket-4242' does not exist" in str(
        info.value
    )
    with pytest.raises(JobError, match="no-such-bucket-4242"):
        s3.write_bytes("s3://no-such-bucket-4242/out/report.json", b"{}", storage)

    with pytest.raises(JobError, match="not a valid bucket name"):
        s3.read_bytes("s3://Bad_Bucket!/x", storage)


def test_missing_precomputed_embeddings_is_a_job_error_naming_the_uri(bucket, moto_endpoint):
    from worker.embeddings import load_precomputed

    uri = f"s3://{bucket}/nope/S.npy"
    with pytest.raises(JobError) as info:
        load_precomputed("S", uri, storage_config(moto_endpoint))
    assert uri in str(info.value)

    buf = io.BytesIO()
    np.save(buf, np.arange(12, dtype=np.float32).reshape(4, 3))
    s3.write_bytes(f"s3://{bucket}/emb/P.npy", buf.getvalue(), storage_config(moto_endpoint))
    got = load_precomputed("P", f"s3://{bucket}/emb/P.npy", storage_config(moto_endpoint))
    assert got.vectors.shape == (4, 3) and got.ids == ["0", "1", "2", "3"]


# ------------------------------------------------------------------ faults


def test_access_denied_is_a_clean_error_without_retries(bucket, moto_endpoint, proxy):
    storage = storage_config(proxy.endpoint)
    uri = f"s3://{bucket}/private/x.npy"
    s3.write_bytes(uri, b"secret data", storage_config(moto_endpoint))
    proxy.rules.append(
        {"method": "GET", "path": "/private/", "status": 403, "code": "AccessDenied", "times": 9}
    )
    with pytest.raises(JobError) as info:
        s3.read_bytes(uri, storage)
    msg = str(info.value)
    assert uri in msg and "access denied" in msg and "AccessDenied" in msg and "HTTP 403" in msg
    assert len(proxy.requests("GET", "/private/")) == 1  # 403 is not retried

    proxy.rules.append(
        {"method": "GET", "path": "list-type=2", "status": 403, "code": "AccessDenied"}
    )
    with pytest.raises(JobError, match=rf"s3://{bucket}/private: access denied"):
        s3.list_items(f"s3://{bucket}/private", (".npy",), storage)


def test_transient_errors_are_retried_then_succeed(bucket, moto_endpoint, proxy, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    storage = storage_config(proxy.endpoint)
    uri = f"s3://{bucket}/flaky/x.bin"
    s3.write_bytes(uri, b"payload", storage_config(moto_endpoint))
    proxy.rules.append(
        {"method": "GET", "path": "/flaky/", "status": 503, "code": "SlowDown", "times": 2}
    )
    assert s3.read_bytes(uri, storage) == b"payload"
    gets = proxy.requests("GET", "/flaky/")
    assert [e["status"] for e in gets] == [503, 503, 200]


def test_cut_off_body_is_retried(bucket, moto_endpoint, proxy):
    storage = storage_config(proxy.endpoint)
    uri = f"s3://{bucket}/cut/x.bin"
    payload = os.urandom(200_000)
    s3.write_bytes(uri, payload, storage_config(moto_endpoint))
    proxy.rules.append({"method": "GET", "path": "/cut/", "mode": "truncate", "times": 1})
    assert s3.read_bytes(uri, storage) == payload
    gets = proxy.requests("GET", "/cut/")
    assert len(gets) == 2 and gets[0].get("fault") == "truncate"


def test_transient_errors_exhausted_are_reported(bucket, moto_endpoint, proxy, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    storage = storage_config(proxy.endpoint)
    uri = f"s3://{bucket}/down/x.bin"
    proxy.rules.append(
        {"method": "GET", "path": "/down/", "status": 500, "code": "InternalError", "times": 99}
    )
    with pytest.raises(s3.S3TransientError) as info:
        s3.read_bytes(uri, storage)
    msg = str(info.value)
    assert uri in msg and "InternalError" in msg and "after 2 attempt(s)" in msg
    assert isinstance(info.value, JobError)
    assert len(proxy.requests("GET", "/down/")) == 2


def test_unreachable_endpoint_is_reported(monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(s3.S3TransientError, match=r"s3://b-1/x: cannot reach S3"):
        s3.read_bytes("s3://b-1/x", storage_config("http://127.0.0.1:9"))


def test_secrets_never_appear_in_errors_or_logs(bucket, moto_endpoint, proxy, caplog, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    caplog.set_level(logging.DEBUG)
    storage = storage_config(proxy.endpoint)
    # A server that echoes credentials in its error message (as SignatureDoesNotMatch does).
    echo = f"key {FAKE_KEY_ID} token {FAKE_TOKEN} X-Amz-Signature=abc"
    proxy.rules += [
        {"path": "/sig/", "status": 403, "code": "SignatureDoesNotMatch", "message": echo},
        {"path": "/boom/", "status": 500, "code": "InternalError", "message": echo, "times": 5},
    ]
    errors = []
    for call in (
        lambda: s3.read_bytes(f"s3://{bucket}/sig/x", storage),
        lambda: s3.read_bytes(f"s3://{bucket}/boom/x", storage),
        lambda: s3.read_bytes(f"s3://{bucket}/absent/x", storage),
        lambda: s3.read_bytes("s3://no-such-bucket-4242/x", storage),
        lambda: s3.list_items("s3://no-such-bucket-4242/p", (".png",), storage),
        lambda: s3.read_bytes("s3://b-1/x", storage_config("http://127.0.0.1:9")),
    ):
        with pytest.raises(JobError) as info:
            call()
        errors.append(info.value)
    for err in errors:
        assert err.__cause__ is None and err.__suppress_context__
        _assert_no_secrets(str(err), repr(err), _full_text(err))
    _assert_no_secrets(caplog.text)


# ------------------------------------------------------------------ publishing outputs


def _output_folder(root: Path) -> dict[str, bytes]:
    files = {
        "report.json": b'{"schema_version": "1.0"}',
        "report.pdf": b"%PDF-1.7 " + os.urandom(300_000),
        "junit.xml": b"<testsuites/>",
        **{f"figures/fig_{i}.png": os.urandom(50_000) for i in range(6)},
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_publish_outputs_uploads_report_json_last(bucket, admin, proxy, tmp_path):
    local = tmp_path / "out"
    files = _output_folder(local)
    dest = f"s3://{bucket}/runs/2026-01-01/"
    done = publish_outputs(local, dest, storage_config(proxy.endpoint))
    assert done[-1] == f"s3://{bucket}/runs/2026-01-01/report.json"
    assert sorted(done) == sorted(f"s3://{bucket}/runs/2026-01-01/{k}" for k in files)

    puts = proxy.requests("PUT")
    assert len(puts) == len(files)
    last = [e for e in puts if e["path"].endswith("/report.json")]
    others = [e for e in puts if not e["path"].endswith("/report.json")]
    assert len(last) == 1
    # report.json's upload started only after every other upload had finished.
    assert last[0]["start"] >= max(e["end"] for e in others)
    assert puts[-1] is last[0]

    for rel, data in files.items():
        body = admin.get_object(Bucket=bucket, Key=f"runs/2026-01-01/{rel}")["Body"].read()
        assert body == data
    head = admin.head_object(Bucket=bucket, Key="runs/2026-01-01/report.pdf")
    assert head["ContentType"] == "application/pdf"


def test_failed_upload_withholds_report_json(bucket, admin, proxy, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    local = tmp_path / "out"
    _output_folder(local)
    proxy.rules.append(
        {"method": "PUT", "path": "/report.pdf", "status": 403, "code": "AccessDenied"}
    )
    with pytest.raises(JobError, match=r"runs/x/report.pdf: access denied"):
        publish_outputs(local, f"s3://{bucket}/runs/x", storage_config(proxy.endpoint))
    listed = admin.list_objects_v2(Bucket=bucket, Prefix="runs/x/").get("Contents", [])
    assert "runs/x/report.json" not in {o["Key"] for o in listed}


def test_publish_outputs_to_a_local_folder(tmp_path):
    local = tmp_path / "out"
    files = _output_folder(local)
    done = publish_outputs(local, str(tmp_path / "dest"))
    assert Path(done[-1]).name == "report.json"
    for rel, data in files.items():
        assert (tmp_path / "dest" / rel).read_bytes() == data


# ------------------------------------------------------------------ the CLI, end to end


def _pipeline_or_skip():
    try:
        import worker.pipeline  # noqa: F401
    except ImportError as err:
        pytest.skip(f"worker.pipeline does not import yet ({err})")


def test_cli_runs_a_job_from_s3_to_s3(bucket, admin, moto_endpoint, tmp_path):
    _pipeline_or_skip()
    rng = np.random.default_rng(0)
    primary = rng.normal(size=(40, 12)).astype(np.float32)
    secondary = (rng.normal(size=(30, 12)) + 1.5).astype(np.float32)
    for name, arr in (("P", primary), ("S", secondary)):
        buf = io.BytesIO()
        np.save(buf, arr)
        admin.put_object(Bucket=bucket, Key=f"data/{name}.npy", Body=buf.getvalue())

    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            model: {{name: precomputed}}
            pca: {{dims: 5, sweep: [2, 5]}}
            datasets:
              primary: {{name: P, embeddings: s3://{bucket}/data/P.npy}}
              secondary:
                - {{name: S, embeddings: s3://{bucket}/data/S.npy}}
            metrics: {{null_repeats: 2, mmd_permutations: 20}}
            selection: {{strategy: band, counts: [1, 3]}}
            output: {{dir: s3://{bucket}/runs/nightly}}
            cache: {{enabled: false}}
            storage: {{s3: {{endpoint_url: "{moto_endpoint}", region: {REGION}}}}}
            gates:
              - {{metric: o_dist, dataset: S, max: 1.0e+12}}
              - {{metric: o_dist, dataset: S, max: 0.0}}
            """
        )
    )
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "run", str(job), "--junit", str(junit), "--quiet"],
        env=cli_env(moto_endpoint),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    # One gate fails on purpose: exit 1, and the report is published all the same.
    assert proc.returncode == 1, proc.stderr[-3000:]
    _assert_no_secrets(proc.stdout, proc.stderr)
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    assert len(cases) == 2
    assert sum(1 for c in cases if c.find("failure") is not None) == 1

    keys = {
        o["Key"]
        for o in admin.list_objects_v2(Bucket=bucket, Prefix="runs/nightly/").get("Contents", [])
    }
    assert {"runs/nightly/report.json", "runs/nightly/report.pdf"} <= keys
    body = admin.get_object(Bucket=bucket, Key="runs/nightly/report.json")["Body"].read()
    report = json.loads(body)
    assert "schema_version" in report
    assert report["passed"] is False
    assert [g["passed"] for g in report["gates"]] == [True, False]
    text = json.dumps(report)
    assert '"S"' in text and '"P"' in text
    _assert_no_secrets(text)
    pdf = admin.get_object(Bucket=bucket, Key="runs/nightly/report.pdf")["Body"].read()
    assert pdf.startswith(b"%PDF")
    # report.html beside it (issue 30), one self-contained page served as HTML
    html = admin.get_object(Bucket=bucket, Key="runs/nightly/report.html")
    assert html["ContentType"] == "text/html"
    page = html["Body"].read().decode("utf-8")
    assert page.lstrip().startswith("<!DOCTYPE html>") and "Plotly" in page
    assert not re.search(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"?(?:https?:)?//", page)


def test_cli_missing_bucket_exits_2_naming_the_uri(moto_endpoint, tmp_path, monkeypatch, capsys):
    _pipeline_or_skip()
    from worker.__main__ import main

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(
            """\
            version: 1
            model: {name: precomputed}
            datasets:
              primary: {name: P, embeddings: s3://no-such-bucket-4242/P.npy}
              secondary: [{name: S, embeddings: s3://no-such-bucket-4242/S.npy}]
            output: {dir: out}
            cache: {enabled: false}
            """
        )
    )
    rc = main(["run", str(job), "--quiet"])  # in-process: the pipeline is imported already
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    assert "s3://no-such-bucket-4242/P.npy" in err and "does not exist" in err
    _assert_no_secrets(err)
    assert not (tmp_path / "out" / "report.json").exists()
