"""Throw-away X.509 material for the TLS tests, made with the ``openssl`` command line.

Everything is written under one directory (a test's ``tmp_path``): a CA, a broker
certificate for ``127.0.0.1``/``localhost`` signed by it, a client certificate signed
by it, and a second, unrelated CA ("wrong CA") that signed nothing we use. Keys are
EC P-256 (fast to generate), certificates are valid for two days.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_CURVE = "prime256v1"
_DAYS = "2"

_CA_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""

_CSR_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
"""

_LEAF_EXTENSIONS = """\
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
{san}
"""


def find_openssl() -> str | None:
    return shutil.which("openssl")


@dataclass(frozen=True, slots=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    ca: KeyPair
    broker: KeyPair
    client: KeyPair
    wrong_ca: KeyPair


def _openssl(*args: str) -> None:
    binary = find_openssl()
    if binary is None:
        raise RuntimeError("openssl is not installed")
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def make_ca(directory: Path, name: str) -> KeyPair:
    """A self-signed CA certificate and its key."""
    config = directory / f"{name}.cnf"
    config.write_text(_CA_CONFIG.format(cn=f"fleet test {name}"))
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req", "-x509", "-new", "-config", str(config), "-extensions", "v3_ca",
        "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{_CURVE}", "-nodes",
        "-keyout", str(pair.key), "-out", str(pair.cert), "-days", _DAYS, "-sha256",
    )  # fmt: skip
    return pair


def issue(ca: KeyPair, directory: Path, name: str, *, server: bool) -> KeyPair:
    """A leaf certificate signed by ``ca``: a server one (SAN 127.0.0.1, localhost) or a client one."""
    csr_config = directory / f"{name}-csr.cnf"
    csr_config.write_text(_CSR_CONFIG.format(cn="localhost" if server else f"fleet test {name}"))
    extensions = directory / f"{name}-ext.cnf"
    extensions.write_text(
        _LEAF_EXTENSIONS.format(
            usage="serverAuth" if server else "clientAuth",
            san="subjectAltName = IP:127.0.0.1,DNS:localhost" if server else "",
        )
    )
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    _openssl(
        "req", "-new", "-config", str(csr_config),
        "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{_CURVE}", "-nodes",
        "-keyout", str(pair.key), "-out", str(csr),
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", f"0x{secrets.token_hex(8)}", "-days", _DAYS, "-sha256",
        "-extfile", str(extensions), "-extensions", "leaf", "-out", str(pair.cert),
    )  # fmt: skip
    return pair


def make_tls_material(directory: Path) -> TlsMaterial:
    """CA, broker and client certificates, and an unrelated CA, all under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory, "ca")
    return TlsMaterial(
        ca=ca,
        broker=issue(ca, directory, "broker", server=True),
        client=issue(ca, directory, "client", server=False),
        wrong_ca=make_ca(directory, "wrong-ca"),
    )
