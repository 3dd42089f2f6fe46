"""Where a Delta lake lives: the root URI and deltalake's object-store options for it.

S3 credentials are found as any AWS tool finds them. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
(and AWS_SESSION_TOKEN) in the environment are used as given. Otherwise botocore's default chain
(the `s3` extra) resolves them from the process environment: a profile (AWS_PROFILE, ~/.aws/credentials,
~/.aws/config, SSO), web identity (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, as on Kubernetes),
a container or an instance profile. Temporary credentials are re-read from the chain before they
expire (`S3Storage.options`). Without botocore, deltalake's own object store tries the environment,
web identity, containers and the instance profile, but reads no profile.

Commits on S3 are made safe for concurrent writers by S3's conditional writes (``If-None-Match: *``),
which AWS S3, MinIO and moto_server honour; no DynamoDB lock is needed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

from keel.schemes import file_path
from keel.errors import BackendError, ConfigError

# Sources deltalake's object store reads itself when botocore is not installed.
_NATIVE_SOURCES = (
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
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


class _FrozenCredentials(Protocol):
    access_key: str
    secret_key: str
    token: str | None


class _Credentials(Protocol):
    """botocore's `Credentials` (refreshable or not), as far as the lake uses them."""

    def get_frozen_credentials(self) -> _FrozenCredentials: ...


class S3Storage:
    """deltalake's storage options for one S3 lake; credentials from a chain are re-read on each call.

    `options()` is cheap: botocore hands back the same frozen credentials until they come close to
    their expiry, and refreshes them then, so a long-running process never signs with expired ones.
    """

    def __init__(self, base: dict[str, str], credentials: _Credentials | None = None) -> None:
        self._base, self._credentials = base, credentials
        self._lock = threading.Lock()

    def options(self) -> dict[str, str]:
        if self._credentials is None:
            return self._base
        try:
            with self._lock:
                frozen = self._credentials.get_frozen_credentials()
        except Exception as exc:  # botocore's refresh failed (STS or the metadata service unreachable)
            raise BackendError(f"cannot renew the AWS credentials of the lake ({exc}); check the profile, "
                               f"the web identity token file and that STS is reachable") from exc
        options = {**self._base, "AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
        if frozen.token:
            options["AWS_SESSION_TOKEN"] = frozen.token
        return options


def s3_options(url: str, env: Mapping[str, str], endpoint_url: str | None = None) -> tuple[str, S3Storage]:
    """(root URI, storage) of an `s3://bucket/prefix` lake: settings from `env`, credentials as above."""
    parts = urlsplit(url)
    if not parts.netloc:
        raise ConfigError(f"lake URL {url!r} names no bucket: write it like 's3://my-bucket/lake'")
    options = {"AWS_REGION": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"}
    endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    # Explicit, so that a change of deltalake's default cannot silently drop commit safety.
    options["conditional_put"] = "etag"
    root = f"s3://{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            if env.get(name):
                options[name] = env[name]
        return root, S3Storage(options)
    return root, _from_chain(url, env, options)


def _from_chain(url: str, env: Mapping[str, str], options: dict[str, str]) -> S3Storage:
    try:
        import botocore.exceptions
        import botocore.session
    except ImportError:
        if env.get("AWS_PROFILE"):
            raise ConfigError(f"the lake {url} uses AWS_PROFILE={env['AWS_PROFILE']!r}, and reading AWS profiles "
                              "needs botocore: pip install 'keel-platform[s3]'") from None
        # deltalake's object store tries these itself, then the instance profile.
        return S3Storage({**options, **{k: env[k] for k in _NATIVE_SOURCES if env.get(k)}})
    try:
        credentials = botocore.session.Session().get_credentials()
        if credentials is not None:
            credentials.get_frozen_credentials()  # a web identity or SSO exchange fails here, not mid-write
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigError(f"cannot get AWS credentials for the lake {url}: {exc}; fix the profile "
                          "(AWS_PROFILE, ~/.aws/config) or the web identity settings") from exc
    except botocore.exceptions.ClientError as exc:
        raise ConfigError(f"AWS refused the credentials exchange for the lake {url}: {exc}") from exc
    if credentials is None:
        raise ConfigError(
            f"no AWS credentials for the lake {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            f"AWS_PROFILE (a profile of ~/.aws/credentials or ~/.aws/config), or run with web identity "
            f"(AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN) or an instance profile"
        )
    return S3Storage(options, credentials)


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
        return ConfigError(f"S3 refused the credentials for the lake {url} ({text[:300]}): check the credentials "
                           f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the role) and the bucket policy")
    if "error sending request" in text or "Connect" in text or "dns error" in text:
        return BackendError(f"cannot reach the S3 endpoint of the lake {url} ({text[:300]}): check that the server "
                            f"is up and AWS_ENDPOINT_URL / endpoint_url is right")
    return BackendError(f"the lake {url} failed: {text[:500]}")
