"""Certificates made in the test (a CA, a server and a client certificate) and the scorer's fixtures."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.unit.online_scorer.conftest import artifacts, catalog, metrics, spec  # noqa: F401


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, usage=None, sans=None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(root: Path) -> Pki:
    ca_key, other_key, server_key, client_key = _key(), _key(), _key(), _key()
    ca = _cert("streamloop test CA", ca_key, "streamloop test CA", ca_key, ca=True)
    other = _cert("some other CA", other_key, "some other CA", other_key, ca=True)
    server = _cert("localhost", server_key, "streamloop test CA", ca_key, ca=False,
                   usage=[ExtendedKeyUsageOID.SERVER_AUTH],
                   sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = _cert("scoring-client", client_key, "streamloop test CA", ca_key, ca=False,
                   usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    files = {
        "ca": ca.public_bytes(serialization.Encoding.PEM),
        "other_ca": other.public_bytes(serialization.Encoding.PEM),
        "server_cert": server.public_bytes(serialization.Encoding.PEM), "server_key": _pem_key(server_key),
        "client_cert": client.public_bytes(serialization.Encoding.PEM), "client_key": _pem_key(client_key),
    }
    paths = {}
    for name, data in files.items():
        path = root / f"{name}.pem"
        path.write_bytes(data)
        paths[name] = path
    return Pki(**paths)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
