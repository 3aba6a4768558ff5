"""S3 fixtures: moto's server on 127.0.0.1, planted credentials (which must never appear in
a message or log), a fresh bucket, and the environment of a CLI run against it. The
fixtures are exposed to every test file through tests/conftest.py; `aws_env` is not autouse
(files that talk to S3 ask for it with pytestmark)."""

from __future__ import annotations

import os
import uuid

import boto3
import pytest

from worker.job import S3Config, StorageConfig
from worker.sources import s3

# Planted credentials: moto accepts any; none of them may ever appear in a message or log.
FAKE_KEY_ID = "AKIAPLANTEDKEYID7777"


FAKE_SECRET = "PlantedSecretKey/NeverPrintThis+42xyzABC"


FAKE_TOKEN = "PlantedSessionTokenNeverPrintThisEither0123456789"


REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3.clear_clients()
    yield
    s3.clear_clients()


def storage_config(endpoint: str) -> StorageConfig:
    return StorageConfig(s3=S3Config(endpoint_url=endpoint, region=REGION))


@pytest.fixture
def admin(moto_endpoint):
    """A plain boto3 client straight to moto, for setting up and checking buckets."""
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=REGION,
        aws_access_key_id=FAKE_KEY_ID,
        aws_secret_access_key=FAKE_SECRET,
    )


@pytest.fixture
def bucket(admin):
    name = f"test-{uuid.uuid4().hex[:12]}"
    admin.create_bucket(Bucket=name)
    return name


def cli_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=FAKE_KEY_ID,
        AWS_SECRET_ACCESS_KEY=FAKE_SECRET,
        AWS_SESSION_TOKEN=FAKE_TOKEN,
        AWS_REGION=REGION,
        AWS_ENDPOINT_URL=endpoint,
        AWS_MAX_ATTEMPTS="3",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env
