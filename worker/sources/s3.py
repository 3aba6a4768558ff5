"""S3 (and S3-compatible) storage: list, read and write objects by s3://bucket/key URI.

- One boto3 client per (endpoint, region, profile, max attempts), created once and reused
  (clients are thread-safe). Credentials come from boto3's standard chain: AWS_* environment
  variables, AWS_PROFILE / the job's `storage.s3.profile`, shared config files, container
  and instance roles.
- Endpoint: `storage.s3.endpoint_url`, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (read by
  botocore itself). Region: `storage.s3.region`, else AWS_REGION / AWS_DEFAULT_REGION.
- Retries: botocore's adaptive mode (exponential backoff plus client-side rate limiting on
  throttling), `storage.s3.max_attempts` if the job model has it, else AWS_MAX_ATTEMPTS,
  else 5 attempts in all. Errors in the middle of a streamed body are retried here too.
- Errors become worker.errors.JobError (exit code 2) naming the URI and what to do. Messages
  carry the S3 error code and HTTP status only: never credentials, request headers or signed
  URLs. A missing object raises S3NotFoundError, which is also a FileNotFoundError, so callers
  treat it like a missing local file.
"""

from __future__ import annotations

import mimetypes
import os
import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from worker.errors import JobError
from worker.sources.items import Item

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_READ_WORKERS = 8
CHUNK_SIZE = 1 << 20
MULTIPART_THRESHOLD = 64 << 20

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_NO_BUCKET_CODES = {"NoSuchBucket"}
_DENIED_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
    "RequestTimeTooSkewed",
}
_REGION_CODES = {
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
    "301",
}
_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "TooManyRequestsException",
    "500",
    "502",
    "503",
    "504",
}


class S3NotFoundError(JobError, FileNotFoundError):
    """A missing object: a JobError (exit 2) that callers may also catch as FileNotFoundError."""

    def __init__(self, message: str):
        JobError.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class S3TransientError(JobError):
    """S3 kept failing with a retryable error (5xx, throttling, timeouts) after all attempts."""


# ---------------------------------------------------------------------------- URIs


def parse_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key). The key may be empty (the bucket root)."""
    if not uri.startswith("s3://"):
        raise JobError(f"{uri}: not an s3:// URI")
    rest = uri[5:]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise JobError(f"{uri}: no bucket name; write s3://BUCKET/PREFIX")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,254}", bucket):
        raise JobError(
            f"{uri}: {bucket!r} is not a valid bucket name (lowercase letters, digits, '.', '-')"
        )
    return bucket, key


def join_uri(base: str, *parts: str) -> str:
    """s3://b/prefix + 'a/b.json' -> s3://b/prefix/a/b.json (no doubled slashes)."""
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


# ---------------------------------------------------------------------------- clients

_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def _s3_settings(storage) -> tuple[str | None, str | None, str | None, int]:
    s3 = getattr(storage, "s3", None) if storage is not None else None
    endpoint = getattr(s3, "endpoint_url", None) or None
    region = (
        getattr(s3, "region", None)
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or None
    )
    profile = getattr(s3, "profile", None) or None
    attempts = getattr(s3, "max_attempts", None)
    if attempts is None:
        env = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
        attempts = int(env) if env.isdigit() and int(env) > 0 else DEFAULT_MAX_ATTEMPTS
    return endpoint, region, profile, int(attempts)


def _quiet_library_loggers() -> None:
    """botocore's DEBUG log prints request headers (security tokens, signatures): keep it at
    WARNING unless someone configured those loggers on purpose."""
    import logging

    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET:
            lg.setLevel(logging.WARNING)


def get_client(storage=None):
    """The cached boto3 S3 client for this storage config (and the current environment)."""
    endpoint, region, profile, attempts = _s3_settings(storage)
    env_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    key = (endpoint, env_endpoint, region, profile, os.environ.get("AWS_PROFILE"), attempts)
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            return client
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        _quiet_library_loggers()
        config = Config(
            retries={"mode": "adaptive", "total_max_attempts": attempts},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=32,
            # Custom endpoints (MinIO, moto, Ceph, ...) rarely serve virtual-host buckets.
            s3={"addressing_style": "path"} if (endpoint or env_endpoint) else {},
        )
        try:
            session = boto3.session.Session(profile_name=profile, region_name=region)
            client = session.client("s3", endpoint_url=endpoint, config=config)
        except BotoCoreError as err:
            raise _botocore_error(err, "s3://", "connecting to S3") from None
        except ValueError as err:  # e.g. a malformed endpoint_url
            raise JobError(
                f"storage.s3.endpoint_url: cannot use this endpoint ({_scrub(str(err))}); "
                "give a full URL such as https://s3.example.com"
            ) from None
        client.worker_max_attempts = attempts  # type: ignore[attr-defined]
        _clients[key] = client
        return client


def clear_clients() -> None:
    """Forget cached clients (tests; or after changing AWS_* variables in-process)."""
    with _clients_lock:
        _clients.clear()


# ---------------------------------------------------------------------------- errors

_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_SIGNED_QUERY = re.compile(r"(X-Amz-[A-Za-z-]+|Signature|AWSAccessKeyId|Expires)=[^&\s\"']+")
_USERINFO = re.compile(r"(https?://)[^/@\s]+@")


def _scrub(text: str) -> str:
    """Remove anything credential-like from a message: env secrets, signed query strings,
    user:password in URLs."""
    for name in (*_SECRET_ENV, "AWS_ACCESS_KEY_ID"):
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = _SIGNED_QUERY.sub(lambda m: f"{m.group(1)}=***", text)
    return _USERINFO.sub(r"\1***@", text)


def _client_error(err, uri: str, action: str, attempts: int | None = None) -> JobError:
    response = getattr(err, "response", {}) or {}
    error = response.get("Error", {}) or {}
    code = str(error.get("Code") or "")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    retries = (response.get("ResponseMetadata") or {}).get("RetryAttempts")
    tag = f"{code or 'error'}, HTTP {status}" if status else (code or "error")
    bucket = uri[5:].split("/", 1)[0] if uri.startswith("s3://") else ""
    if code in _NO_BUCKET_CODES:
        return JobError(
            f"{uri}: bucket {bucket!r} does not exist ({tag}); check the bucket name in the URI "
            "and that storage.s3.endpoint_url / region point at the right service"
        )
    if code in _NOT_FOUND_CODES or status == 404:
        return S3NotFoundError(f"{uri}: object not found ({tag}); check the path in the job")
    if code in _DENIED_CODES or status == 403:
        return JobError(
            f"{uri}: access denied while {action} ({tag}); check that the credentials in use "
            "(AWS_PROFILE / storage.s3.profile, AWS_ACCESS_KEY_ID, or the instance or pod role) "
            "allow this on the bucket and prefix"
        )
    if code in _REGION_CODES or status == 301:
        return JobError(
            f"{uri}: bucket {bucket!r} is in another region ({tag}); "
            "set storage.s3.region or AWS_REGION to the bucket's region"
        )
    if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500) or status == 429:
        tries = attempts if attempts is not None else (retries or 0) + 1
        return S3TransientError(
            f"{uri}: S3 kept failing while {action} ({tag}) after {tries} attempt(s); "
            "this is usually temporary: run the job again later, or allow more attempts "
            "with AWS_MAX_ATTEMPTS"
        )
    return JobError(f"{uri}: S3 error while {action} ({tag}); check the URI and permissions")


def _botocore_error(err, uri: str, action: str) -> JobError:
    from botocore import exceptions as bex

    name = type(err).__name__
    if isinstance(err, bex.NoCredentialsError | bex.PartialCredentialsError):
        return JobError(
            f"{uri}: no usable AWS credentials while {action}; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE (or storage.s3.profile), or run with an "
            "instance or pod role"
        )
    if isinstance(err, bex.ProfileNotFound):
        return JobError(
            f"{uri}: AWS profile not found while {action}; check storage.s3.profile / "
            "AWS_PROFILE against ~/.aws/config"
        )
    if isinstance(
        err,
        bex.EndpointConnectionError
        | bex.ConnectTimeoutError
        | bex.ReadTimeoutError
        | bex.ConnectionClosedError
        | bex.ResponseStreamingError
        | bex.IncompleteReadError,
    ):
        return S3TransientError(
            f"{uri}: cannot reach S3 while {action} ({name}) after all retries; check "
            "storage.s3.endpoint_url and the network, or run the job again later"
        )
    if isinstance(err, bex.NoRegionError):
        return JobError(f"{uri}: no AWS region set; set storage.s3.region or AWS_REGION")
    return JobError(f"{uri}: S3 client error while {action} ({name}); check the storage settings")


def _translate(err: BaseException, uri: str, action: str) -> JobError:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(err, JobError):
        return err
    if isinstance(err, ClientError):
        return _client_error(err, uri, action)
    if isinstance(err, BotoCoreError):
        return _botocore_error(err, uri, action)
    try:
        from boto3.exceptions import S3UploadFailedError
    except ImportError:  # pragma: no cover
        S3UploadFailedError = ()  # noqa: N806
    if isinstance(err, S3UploadFailedError):
        m = re.search(r"An error occurred \(([^)]+)\)", str(err))
        code = m.group(1) if m else ""
        fake = type("E", (), {"response": {"Error": {"Code": code}}})()
        return _client_error(fake, uri, action)
    return JobError(f"{uri}: S3 failed while {action} ({type(err).__name__})")


def _raise(err: BaseException, uri: str, action: str):
    exc = _translate(err, uri, action)
    # The message is scrubbed again in case a custom endpoint echoed anything sensitive.
    exc.args = (_scrub(str(exc)),)
    raise exc from None


# ---------------------------------------------------------------------------- listing


def iter_keys(root: str, storage=None) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under an s3:// prefix, following all pages."""
    bucket, prefix = parse_uri(root)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    client = get_client(storage)
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", ()) or ():
                yield obj["Key"], int(obj.get("Size", 0))
    except Exception as err:  # noqa: BLE001 - translated into a JobError
        _raise(err, root, "listing objects")


def list_items(root: str, extensions: tuple[str, ...], storage=None):
    """Objects under an s3:// prefix whose names end with one of `extensions` (any case),
    sorted by key relative to the prefix. Hidden names and folder markers are skipped.
    No object at all under the prefix is an error (the S3 form of "folder not found")."""
    bucket, prefix = parse_uri(root)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    from worker.sources.items import Listing

    exts = tuple(e.lower() for e in extensions)
    items: list[Item] = []
    hidden: dict[str, int] = {}
    seen_any = False
    for key, _size in iter_keys(root, storage):
        seen_any = True
        rel = key[len(prefix) :]
        name = rel.rsplit("/", 1)[-1]
        if not rel or key.endswith("/") or name.startswith("."):
            continue
        if not name.lower().endswith(exts):
            continue
        folders = rel.split("/")[:-1]
        dot = next((i for i, part in enumerate(folders) if part.startswith(".")), None)
        if dot is not None:  # .git/, .ipynb_checkpoints/...: never data, as for local folders
            folder = "/".join(folders[: dot + 1])
            hidden[folder] = hidden.get(folder, 0) + 1
            continue
        items.append(Item(id=rel, uri=f"s3://{bucket}/{key}"))
    if not seen_any:
        raise JobError(
            f"{root}: no objects under this prefix; check the dataset 'path' in the job "
            "(bucket and prefix, case-sensitive)"
        )
    items.sort(key=lambda it: it.id)
    warnings = [
        f"{root}: folder {folder}/ not read: hidden folder (name starts with '.'; "
        f"{n} image object(s))"
        for folder, n in sorted(hidden.items())
    ]
    return Listing(items, warnings=warnings)


# ---------------------------------------------------------------------------- reads


def _is_stream_error(err: BaseException) -> bool:
    from botocore import exceptions as bex

    if isinstance(err, bex.ResponseStreamingError | bex.IncompleteReadError | bex.ReadTimeoutError):
        return True
    try:
        from urllib3.exceptions import ProtocolError, ReadTimeoutError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(err, ProtocolError | ReadTimeoutError)


def read_bytes(uri: str, storage=None) -> bytes:
    """The whole object, read as a stream in chunks. Errors in the middle of the body (a
    connection reset, a short read) are retried up to the configured attempts."""
    bucket, key = parse_uri(uri)
    if not key or key.endswith("/"):
        raise JobError(f"{uri}: names a prefix, not an object; give the full key")
    client = get_client(storage)
    attempts = getattr(client, "worker_max_attempts", DEFAULT_MAX_ATTEMPTS)
    last: BaseException | None = None
    for _ in range(max(1, attempts)):
        try:
            response = client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                return b"".join(body.iter_chunks(CHUNK_SIZE))
            finally:
                body.close()
        except Exception as err:  # noqa: BLE001
            if _is_stream_error(err):
                last = err
                continue
            _raise(err, uri, "reading")
    _raise(last, uri, "reading")  # type: ignore[arg-type]
    raise AssertionError("unreachable")  # pragma: no cover


def read_many(
    uris: Iterable[str],
    storage=None,
    *,
    max_workers: int = DEFAULT_READ_WORKERS,
    return_exceptions: bool = False,
) -> Iterator[tuple[str, bytes | BaseException]]:
    """Read many objects in parallel; yield (uri, bytes) in the order given.

    At most 2 * max_workers objects are in flight or buffered, so memory stays bounded
    however long `uris` is. With return_exceptions=True a failed read yields (uri, error)
    instead of raising (an S3NotFoundError for a missing object, a JobError otherwise), so a
    caller can skip one unreadable item; otherwise the first error is raised when reached.
    """
    workers = max(1, int(max_workers))
    get_client(storage)  # create the client once, before the threads race for it
    pending: deque[tuple[str, Future]] = deque()
    it = iter(uris)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3-read") as pool:
        try:
            for uri in it:
                pending.append((uri, pool.submit(read_bytes, uri, storage)))
                if len(pending) >= 2 * workers:
                    yield _take(pending.popleft(), return_exceptions)
            while pending:
                yield _take(pending.popleft(), return_exceptions)
        finally:
            for _, fut in pending:
                fut.cancel()


def _take(entry: tuple[str, Future], return_exceptions: bool) -> tuple[str, bytes | BaseException]:
    uri, fut = entry
    try:
        return uri, fut.result()
    except Exception as err:
        if return_exceptions:
            return uri, err
        raise


def exists(uri: str, storage=None) -> bool:
    """True if the object exists. A missing bucket reads as False (S3's HEAD cannot tell);
    access denied is a JobError."""
    bucket, key = parse_uri(uri)
    client = get_client(storage)
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as err:  # noqa: BLE001
        exc = _translate(err, uri, "checking that the object exists")
        if isinstance(exc, S3NotFoundError) or "NoSuchBucket" in str(exc):
            return False
        _raise(exc, uri, "checking that the object exists")
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------- writes


def _content_type(name: str) -> str:
    guess, _ = mimetypes.guess_type(name)
    return guess or "application/octet-stream"


def write_bytes(uri: str, data: bytes, storage=None) -> None:
    """One PUT of the whole object: readers see the old object or the new one, never a part."""
    bucket, key = parse_uri(uri)
    if not key or key.endswith("/"):
        raise JobError(f"{uri}: names a prefix, not an object; give the full key")
    client = get_client(storage)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=_content_type(key))
    except Exception as err:  # noqa: BLE001
        _raise(err, uri, "writing")


def upload_file(local_path: str | Path, uri: str, storage=None) -> None:
    """Upload a local file. Files up to 64 MiB go in one PUT; larger ones as a multipart
    upload, which S3 also makes visible only once complete."""
    path = Path(local_path)
    bucket, key = parse_uri(uri)
    if not key or key.endswith("/"):
        raise JobError(f"{uri}: names a prefix, not an object; give the full key")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise JobError(f"{path}: cannot read the file to upload ({err.strerror})") from None
    client = get_client(storage)
    try:
        if size <= MULTIPART_THRESHOLD:
            with open(path, "rb") as f:
                client.put_object(Bucket=bucket, Key=key, Body=f, ContentType=_content_type(key))
        else:
            from boto3.s3.transfer import TransferConfig

            client.upload_file(
                str(path),
                bucket,
                key,
                ExtraArgs={"ContentType": _content_type(key)},
                Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, max_concurrency=4),
            )
    except Exception as err:  # noqa: BLE001
        _raise(err, uri, "uploading")
