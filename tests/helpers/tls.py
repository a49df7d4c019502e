"""Throwaway certificate authorities and certificates for TLS tests (``openssl`` CLI).

    ca = make_ca(tmp_path / "ca")
    server = issue(ca, tmp_path / "server", "127.0.0.1", ips=("127.0.0.1",))
    client = issue(ca, tmp_path / "client", "certuser", client=True)

Keys are unencrypted P-256 (quick to make); everything is valid for one day.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertificateAuthority", "Issued", "issue", "make_ca"]


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA: its certificate (the trust anchor to hand to clients) and key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Issued:
    """A certificate signed by ``ca`` and its key."""

    cert: Path
    key: Path
    ca: CertificateAuthority


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _new_key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{path}"
    )
    path.chmod(0o600)


def make_ca(directory: Path, name: str = "resync test CA") -> CertificateAuthority:
    """A self-signed CA certificate (CA:TRUE) and its key in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.crt", directory / "ca.key"
    _new_key(key)
    _openssl(
        *("req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", "1"),
        *("-subj", f"/CN={name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )
    return CertificateAuthority(cert, key)


def issue(
    ca: CertificateAuthority,
    directory: Path,
    common_name: str,
    *,
    ips: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    client: bool = False,
) -> Issued:
    """A certificate for ``common_name`` signed by ``ca``: a server's (with the
    given IP and DNS names) or, with ``client=True``, a client's."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, csr, ext = (directory / n for n in ("cert.crt", "cert.key", "cert.csr", "ext.cnf"))
    _new_key(key)
    _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={common_name}")
    names = [f"IP:{ip}" for ip in ips] + [f"DNS:{name}" for name in dns]
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
    ]
    if names:
        lines.append(f"subjectAltName={','.join(names)}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        *("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key)),
        *("-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext)),
    )
    return Issued(cert, key, ca)
