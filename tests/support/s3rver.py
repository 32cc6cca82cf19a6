"""A second S3 implementation for the fetch benchmark: s3rver (Node.js, from
npm) behind TLS with a certificate from a private CA made on the spot, on
loopback, as an intranet store would be. `make .node-s3rver/.installed`
installs it into .node-s3rver/."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.s3_server import free_port

ROOT = Path(__file__).resolve().parents[2]
S3RVER = ROOT / ".node-s3rver" / "node_modules" / ".bin" / "s3rver"
KEY = SECRET = "S3RVER"  # the credentials s3rver accepts


def private_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    """Writes a CA certificate and a server key and certificate for 127.0.0.1 signed by it; returns
    (ca.pem, server-key.pem, server.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Plugboard test intranet CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server-key.pem", folder / "server.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths[2].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return paths


class S3rver:
    """s3rver over HTTPS on a free loopback port, storing under a temporary folder."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="s3rver-"))
        self.ca, self._key, self._cert = private_ca_and_server_cert(self.folder)
        self.process: subprocess.Popen | None = None

    def start(self) -> S3rver:
        if not S3RVER.exists():
            raise RuntimeError("s3rver is not installed: run `make .node-s3rver/.installed`.")
        (self.folder / "data").mkdir()
        self.process = subprocess.Popen(
            [str(S3RVER), "-d", str(self.folder / "data"), "-a", "127.0.0.1", "-p", str(self.port), "--silent",
             "--key", str(self._key), "--cert", str(self._cert)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("s3rver did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)

    def client(self, *, max_pool_connections: int = 10):
        """A boto3 client that trusts the private CA (and nothing else for this endpoint)."""
        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=KEY, aws_secret_access_key=SECRET,
            verify=str(self.ca),
            # s3rver 3.7 predates the aws-chunked uploads with checksum trailers that botocore sends by default
            # since 1.36: it would store the chunk framing as part of the object (116 bytes more per part).
            config=Config(max_pool_connections=max_pool_connections, s3={"addressing_style": "path"},
                          request_checksum_calculation="when_required"),
        )  # fmt: skip
