"""S3 credentials found as any AWS tool finds them (not only AWS_* keys), against moto_server.

Each test runs with a private HOME (no ~/.aws of the machine), no AWS_ACCESS_KEY_ID in the
environment and the instance-metadata service disabled, so the only source is the one under test.
"""

from __future__ import annotations

import sys
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from keel.errors import BackendError, ConfigError
from keel.lake import open_lake
from keel.lake._storage import S3Storage
from keel.lake.delta import DeltaLake
from tests.harness.s3 import S3Server

pytestmark = pytest.mark.s3

SCHEMA = pa.schema([("user_id", pa.string()), ("n", pa.int64())])


@pytest.fixture
def no_env_keys(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                 "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    return home


def write_and_read_back(lake: DeltaLake) -> None:
    lake.create_table("visits", SCHEMA)
    assert lake.append("visits", pa.table({"user_id": ["u1", "u2"], "n": [1, 2]}, schema=SCHEMA)) is True
    assert sorted(lake.read("visits").column("user_id").to_pylist()) == ["u1", "u2"]


def test_a_profile_of_the_shared_credentials_file_is_used(s3_server: S3Server, no_env_keys: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (no_env_keys / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = wrong-profile\naws_secret_access_key = x\n\n"
        "[analytics]\naws_access_key_id = from-the-profile\naws_secret_access_key = profile-secret\n")
    (no_env_keys / ".aws" / "config").write_text("[profile analytics]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_PROFILE", "analytics")
    lake = open_lake(s3_server.url())
    assert isinstance(lake, DeltaLake)
    write_and_read_back(lake)
    assert lake._storage_options()["AWS_ACCESS_KEY_ID"] == "from-the-profile"  # type: ignore[index]


def test_web_identity_assumes_the_role_through_sts(s3_server: S3Server, no_env_keys: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    # a Kubernetes service-account token is a JWT; moto's STS does not verify its signature
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDprZWVsIn0.c2ln")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/keel-lake")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", s3_server.endpoint)
    lake = open_lake(s3_server.url())
    assert isinstance(lake, DeltaLake)
    write_and_read_back(lake)
    options = lake._storage_options()
    assert options is not None and options["AWS_ACCESS_KEY_ID"].startswith("ASIA") and options["AWS_SESSION_TOKEN"]


def test_an_unknown_profile_is_one_config_error_naming_it(s3_server: S3Server, no_env_keys: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(ConfigError, match="nope"):
        open_lake(s3_server.url())


def test_no_credentials_anywhere_is_one_config_error_listing_the_sources(s3_server: S3Server,
                                                                         no_env_keys: Path) -> None:
    with pytest.raises(ConfigError, match="no AWS credentials.*AWS_PROFILE.*AWS_WEB_IDENTITY_TOKEN_FILE"):
        open_lake(s3_server.url())


def test_check_names_a_bucket_deleted_after_the_lake_was_opened(s3_server: S3Server) -> None:
    bucket = f"gone-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    lake = open_lake(f"s3://{bucket}/lake", env=s3_server.env)
    lake.check()
    urllib.request.urlopen(urllib.request.Request(f"{s3_server.endpoint}/{bucket}", method="DELETE"), timeout=10)
    with pytest.raises(BackendError, match=f"bucket '{bucket}' .* does not exist: create it .*aws s3 mb s3://{bucket}"):
        lake.check()


class Rotating:
    """A botocore-like credentials object whose frozen credentials change when told (a renewal)."""

    def __init__(self) -> None:
        self.key = "first-key"

    def get_frozen_credentials(self) -> SimpleNamespace:
        return SimpleNamespace(access_key=self.key, secret_key="secret", token=f"token-of-{self.key}")


def test_renewed_credentials_replace_the_open_table_handles(s3_server: S3Server) -> None:
    base = {"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_ALLOW_HTTP": "true",
            "conditional_put": "etag"}
    credentials = Rotating()
    url = s3_server.url()
    lake = DeltaLake(url, S3Storage(base, credentials), url)
    write_and_read_back(lake)
    first = lake._tables["visits"]
    credentials.key = "second-key"
    assert lake.append("visits", pa.table({"user_id": ["u3"], "n": [3]}, schema=SCHEMA)) is True
    assert lake._tables["visits"] is not first  # reopened with the renewed credentials
    assert lake._storage_options() == {**base, "AWS_ACCESS_KEY_ID": "second-key", "AWS_SECRET_ACCESS_KEY": "secret",
                                       "AWS_SESSION_TOKEN": "token-of-second-key"}
    assert lake.describe("visits").rows == 3


class Expired:
    def get_frozen_credentials(self) -> SimpleNamespace:
        raise RuntimeError("Error when retrieving credentials from sts: Could not connect")


def test_credentials_that_cannot_be_renewed_are_one_backend_error(s3_server: S3Server) -> None:
    url = s3_server.url()
    lake = DeltaLake(url, S3Storage({"AWS_ENDPOINT_URL": s3_server.endpoint}, Expired()), url)
    with pytest.raises(BackendError, match="cannot renew the AWS credentials of the lake.*Could not connect"):
        lake.list_tables()


def test_without_botocore_a_profile_asks_for_the_extra_and_web_identity_goes_to_deltalake(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from keel.lake._storage import s3_options

    monkeypatch.setitem(sys.modules, "botocore", None)  # as if the s3 extra were not installed
    monkeypatch.setitem(sys.modules, "botocore.session", None)
    monkeypatch.setitem(sys.modules, "botocore.exceptions", None)
    with pytest.raises(ConfigError, match=r"AWS_PROFILE='dev'.*pip install 'keel-platform\[s3\]'"):
        s3_options("s3://b/lake", {"AWS_PROFILE": "dev"})
    env = {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token", "AWS_ROLE_ARN": "arn:aws:iam::1:role/r"}
    _, storage = s3_options("s3://b/lake", env)
    options = storage.options()
    assert {k: options[k] for k in env} == env and "AWS_ACCESS_KEY_ID" not in options
