"""A small PKI for the fleet's broker: one CA and one server certificate with the broker's host names as SANs.

Why our own: a broker on a LAN rarely has a public name, and the nodes verify the server against the CA in
their config (`broker.ca`). `edgefleet broker pki --hosts mqtt.lan,192.168.1.10 --out DIR` writes:

    DIR/ca.pem          the CA certificate: give it to nodes (config broker.ca) and collectors (--ca)
    DIR/ca.key          the CA key (mode 600): keep it offline; it signs the next server certificate
    DIR/server.pem      the broker's certificate, SANs = --hosts
    DIR/server.key      the broker's key (mode 600)

Keys are created with mode 0600 from the start (os.open with O_EXCL), never chmod-ed after a write.
EC P-256 keys: what mbedtls on the ESP32 handshakes fastest and in the least RAM.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgefleetError


@dataclass(frozen=True)
class PkiFiles:
    """Where `create` put the CA and the server certificate."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret file that is 0600 from its creation (no window in which another user could read it).

    An existing file is replaced (unlinked first, so a file left world-readable is not reused)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _san(host: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create(
    out: Path,
    hosts: list[str],
    days: int = 825,
    not_before: dt.datetime | None = None,
    ca_name: str = "edgefleet fleet CA",
) -> PkiFiles:
    """CA + server certificate for `hosts` (DNS names or IP addresses) valid for `days` from `not_before` (now).

    `not_before` in the past with a short `days` makes an expired certificate (what the tests use to prove
    that an expired broker certificate is refused)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    hosts = [h.strip() for h in hosts if h.strip()]
    if not hosts:
        raise EdgefleetError("no host names for the server certificate", hint="--hosts mqtt.lan,192.168.1.10")
    out = Path(out)
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = PkiFiles(out / "ca.pem", out / "ca.key", out / "server.pem", out / "server.key")
    out.mkdir(parents=True, exist_ok=True)
    write_secret(files.ca_key, _pem_key(ca_key))
    write_secret(files.server_key, _pem_key(srv_key))
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
    return files


def existing(tls_dir: Path) -> PkiFiles:
    """The files `create` wrote in `tls_dir`, checked to exist (one clear error naming the missing one)."""
    d = Path(tls_dir)
    files = PkiFiles(d / "ca.pem", d / "ca.key", d / "server.pem", d / "server.key")
    for p in (files.ca_cert, files.server_cert, files.server_key):
        if not p.is_file():
            raise EdgefleetError(
                f"{p} not found",
                hint=f"create the broker's certificates: edgefleet broker pki --out {d} --hosts HOST,...",
            )
    return files
