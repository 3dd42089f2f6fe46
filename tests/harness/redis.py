"""pytest plugin: a real redis-server on 127.0.0.1 for the whole session.

Fixtures:
* ``redis_server`` — the running `RedisServer`; tests may ``stop()``/``start()``/``restart()`` it
  (same port, so clients reconnect) to play "Redis went away in the middle of a load".
* ``redis_url`` — ``redis://127.0.0.1:PORT/0`` of that server.

`RedisServer(..., tls=make_tls(folder))` serves TLS only (``--port 0 --tls-port PORT``), with a CA
and a server certificate for 127.0.0.1/localhost made on the spot; its ``url`` is then
``rediss://127.0.0.1:PORT/0?ssl_ca_certs=CA``.

The server keeps nothing on disk (``--save "" --appendonly no``): a restart starts empty.
If redis-server is not installed the fixtures FAIL, naming scripts/install-redis.sh.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.process import free_port, log_tail, started, stop_process, wait_ready

INSTALL_HINT = "run scripts/install-redis.sh (installs the Debian package redis-server)"


def find_redis_server() -> str | None:
    if Path("/usr/bin/redis-server").exists():
        return "/usr/bin/redis-server"
    return shutil.which("redis-server")




@dataclass(frozen=True)
class Tls:
    """PEM files: the CA that signed the server's certificate, and that certificate with its key."""

    ca: Path
    cert: Path
    key: Path


def make_tls(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Tls:
    """A fresh CA and a server certificate it signed for ``hosts``, valid for a day (needs `cryptography`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    folder.mkdir(parents=True, exist_ok=True)

    def issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
              ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        else:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = issue("keel test CA", ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keel test CA")]),
                    ca_key, ca=True)
    server_cert = issue(hosts[0], server_key, ca_cert.subject, ca_key, ca=False)
    tls = Tls(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    tls.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return tls


def ping(port: int, timeout: float = 0.5, tls: Tls | None = None) -> bool:
    """True when a Redis server answers PING on 127.0.0.1:port (raw RESP: no client library needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            sock = raw
            if tls is not None:
                sock = ssl.create_default_context(cafile=str(tls.ca)).wrap_socket(raw, server_hostname="127.0.0.1")
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:  # ssl.SSLError is one
        return False


class RedisServer:
    """One redis-server process on a fixed loopback port, in its own temporary directory."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None, tls: Tls | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (no-op if it runs) and wait until it answers PING."""
        if self.running:
            return
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - the child owns it while it runs
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
        ]  # fmt: skip
        if self.tls is not None:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                         "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                         "--tls-auth-clients", "no"]
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        why = wait_ready(self.process, lambda: ping(self.port, tls=self.tls), timeout, pause=0.05)
        if why is None:
            return
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on 127.0.0.1:{self.port} ({why}); its log:\n"
                           f"{log_tail(self.workdir / 'redis.log')}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until the port is closed."""
        if self.process is None:
            return
        process, self.process = self.process, None
        stop_process(process, timeout)

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.fail(f"redis-server is not installed: {INSTALL_HINT}", pytrace=False)
    with started(lambda workdir: RedisServer(binary, workdir), "keel-redis-") as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
