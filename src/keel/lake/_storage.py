"""Where a Delta lake lives: the root URI and deltalake's object-store options for it.

S3 settings come from the standard AWS_* variables, read once when the lake is opened, and are
handed to deltalake's own object store (no boto3, no s3fs). Commits on S3 are made safe for
concurrent writers by S3's conditional writes (``If-None-Match: *``), which AWS S3, MinIO and
moto_server honour; no DynamoDB lock is needed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from keel.config import file_path
from keel.errors import BackendError, ConfigError

_CREDENTIAL_SOURCES = (
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def local_root(url: str) -> str:
    """The directory of a `file://` lake, created if absent."""
    path = file_path(url)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the lake directory {path} ({exc}); fix the lake URL or its permissions") from exc
    return str(path)


def s3_options(url: str, env: Mapping[str, str], endpoint_url: str | None = None) -> tuple[str, dict[str, str]]:
    """(root URI, storage options) of an `s3://bucket/prefix` lake, from AWS_* variables in `env`."""
    parts = urlsplit(url)
    if not parts.netloc:
        raise ConfigError(f"lake URL {url!r} names no bucket: write it like 's3://my-bucket/lake'")
    key_id, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not (key_id and secret) and not any(env.get(k) for k in _CREDENTIAL_SOURCES):
        raise ConfigError(
            f"no AWS credentials for the lake {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            f"(or AWS_PROFILE / AWS_WEB_IDENTITY_TOKEN_FILE) in the environment of this process"
        )
    options = {"AWS_REGION": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", *_CREDENTIAL_SOURCES):
        if env.get(name):
            options[name] = env[name]
    endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    # Explicit, so that a change of deltalake's default cannot silently drop commit safety.
    options["conditional_put"] = "etag"
    root = f"s3://{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
    return root, options


def brief(exc: BaseException, lines: int = 8) -> str:
    """An engine error's message without colour codes, backtraces or blank lines."""
    text = _ANSI.sub("", str(exc))
    kept = [ln.strip().lstrip("↳").strip() for ln in text.splitlines() if ln.strip()]
    kept = [ln for ln in kept if not re.match(r"^\d+: ", ln) and not ln.startswith("at ")]
    return " / ".join(kept[:lines])


def storage_error(url: str, exc: BaseException) -> Exception:
    """One clear keel error for an object-store failure (bucket, credentials, network)."""
    text = brief(exc, lines=40)
    bucket = urlsplit(url).netloc
    if "NoSuchBucket" in text:
        return BackendError(f"the S3 bucket {bucket!r} of the lake {url} does not exist: create it "
                            f"(e.g. `aws s3 mb s3://{bucket}`) or fix the lake URL")
    if any(s in text for s in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403 Forbidden")):
        return ConfigError(f"S3 refused the credentials for the lake {url} ({text[:300]}): check AWS_ACCESS_KEY_ID, "
                           f"AWS_SECRET_ACCESS_KEY and the bucket policy")
    if "error sending request" in text or "Connect" in text or "dns error" in text:
        return BackendError(f"cannot reach the S3 endpoint of the lake {url} ({text[:300]}): check that the server "
                            f"is up and AWS_ENDPOINT_URL / endpoint_url is right")
    return BackendError(f"the lake {url} failed: {text[:500]}")
