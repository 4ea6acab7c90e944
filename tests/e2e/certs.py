"""Test certificates for TLS end-to-end tests, made with the `openssl` command line tool.

`make_certs(directory)` writes, in a few tenths of a second (EC P-256 keys):

- a test CA and an unrelated "wrong" CA (self-signed, CA:TRUE, keyCertSign),
- `server`: a leaf for `localhost` / 127.0.0.1 (subjectAltName, serverAuth) signed by the CA,
- `wrong_host`: the same but whose only subjectAltName is DNS:wrong.example,
- `expired`: the same names as `server`, signed by the CA, valid from 30 days ago until
  yesterday,
- `untrusted`: the same names as `server`, signed by the wrong CA,
- `client`: a client certificate (clientAuth, CN = `client_name`) signed by the CA, and
  `untrusted_client`, the same signed by the wrong CA.

Nothing in here knows about a particular server: the names on the server certificates
are parameters (an XMPP server's certificate names the XMPP domain, not the host).

Why `openssl ca` and not `openssl req -x509` / `openssl x509 -req`: OpenSSL 3.0 (Debian 12)
has no `-not_before`/`-not_after` for those, and `x509 -days -1` makes a certificate whose
notAfter precedes its notBefore. `openssl ca -startdate/-enddate` sets both ends, so the
expired leaf is a well-formed certificate that merely ran out, and every other certificate
starts a day in the past (a peer whose wall clock is faked back an hour still accepts it).
All the extensions come from our own config file, never from the system's openssl.cnf
(whose v3_ca section would, e.g., make a leaf CA:TRUE, which webpki/rustls refuses).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from harness import HarnessError

# notBefore of every certificate except the expired one: a day back (clock skew, faked clocks)
BACKDATE = dt.timedelta(days=1)
VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class Leaf:
    """An end-entity certificate and its unencrypted PKCS#8 key (PEM files)."""

    cert: Path
    key: Path
    # cert followed by key in one PEM file (for servers that want them together, e.g. ejabberd)
    bundle: Path


@dataclass(frozen=True)
class Certs:
    dir: Path
    ca_cert: Path
    ca_key: Path
    wrong_ca_cert: Path
    wrong_ca_key: Path
    server: Leaf            # the server names, signed by the CA
    wrong_host: Leaf        # DNS:wrong.example only, signed by the CA
    expired: Leaf           # the server names, signed by the CA, expired yesterday
    untrusted: Leaf         # the server names, signed by the wrong CA
    client: Leaf            # clientAuth, CN = client_name, signed by the CA
    untrusted_client: Leaf  # clientAuth, CN = client_name, signed by the wrong CA
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    client_name: str


def openssl_bin() -> str:
    found = shutil.which("openssl")
    if not found:
        raise HarnessError("openssl not found on PATH (install the Debian package 'openssl')")
    return found


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run([openssl_bin(), *args], cwd=cwd, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise HarnessError(f"openssl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")


def _asn1_time(t: dt.datetime) -> str:
    # GeneralizedTime form; OpenSSL stores it as UTCTime where the year allows (RFC 5280)
    return t.astimezone(dt.timezone.utc).strftime("%Y%m%d%H%M%SZ")


def _config(d: Path, dns_names: Iterable[str], ip_addresses: Iterable[str]) -> str:
    san = ", ".join([f"DNS:{n}" for n in dns_names] + [f"IP:{a}" for a in ip_addresses])
    ca_sections = []
    for name in ("good", "wrong"):
        ca_sections.append(f"""\
[ca_{name}]
dir = {d}/ca-{name}
database = $dir/index.txt
new_certs_dir = $dir
certificate = $dir/ca.crt
private_key = $dir/ca.key
rand_serial = yes
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
""")
    return "\n".join(ca_sections) + f"""\
[policy_any]
commonName = supplied
organizationName = optional

[req]
distinguished_name = req_dn
prompt = no

[req_dn]

[ext_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ext_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = {san}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ext_wrong_host]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:wrong.example
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ext_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_certs(directory: Path, dns_names: Iterable[str] = ("localhost",),
               ip_addresses: Iterable[str] = ("127.0.0.1",), client_name: str = "fieldgate-client") -> Certs:
    """Write a fresh set of test certificates into `directory` (created if missing).

    `dns_names` / `ip_addresses` are the subjectAltNames of the server certificates
    (`server`, `expired`, `untrusted`); the first DNS name is also their CN."""
    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    dns_names = tuple(dns_names)
    ip_addresses = tuple(ip_addresses)
    if not dns_names and not ip_addresses:
        raise ValueError("a server certificate needs at least one name or address")
    cn = dns_names[0] if dns_names else ip_addresses[0]
    conf = d / "openssl.cnf"
    conf.write_text(_config(d, dns_names, ip_addresses))
    for name in ("good", "wrong"):
        ca_dir = d / f"ca-{name}"
        ca_dir.mkdir(exist_ok=True)
        (ca_dir / "index.txt").write_text("")  # a fresh database: no serial/subject clashes

    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    valid = (_asn1_time(now - BACKDATE), _asn1_time(now + VALIDITY))

    def request(stem: str, subject: str) -> tuple[Path, Path]:
        key, csr = d / f"{stem}.key", d / f"{stem}.csr"
        _openssl("req", "-config", str(conf), "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", subject, cwd=d)
        return key, csr

    def sign(ca: str, csr: Path, out: Path, ext: str, dates: tuple[str, str], selfsign: bool = False) -> None:
        ca_dir = d / f"ca-{ca}"
        _openssl("ca", "-config", str(conf), "-name", f"ca_{ca}", "-batch", "-notext", "-preserveDN", "-in", str(csr),
                 "-out", str(out), "-extensions", ext, "-startdate", dates[0], "-enddate", dates[1],
                 *(["-selfsign", "-keyfile", str(ca_dir / "ca.key")] if selfsign else []), cwd=d)
        csr.unlink()

    cas = {}
    for ca, subject in (("good", "/O=fieldgate tests/CN=fieldgate test CA"),
                        ("wrong", "/O=somebody else/CN=unrelated CA")):
        key, csr = request(f"ca-{ca}/ca", subject)
        cert = d / f"ca-{ca}" / "ca.crt"
        sign(ca, csr, cert, "ext_ca", valid, selfsign=True)
        # at the top of the directory too, under telling names
        top = "ca" if ca == "good" else "wrong-ca"
        shutil.copyfile(cert, d / f"{top}.crt")
        shutil.copyfile(key, d / f"{top}.key")
        cas[ca] = (d / f"{top}.crt", d / f"{top}.key")

    def leaf(stem: str, ca: str, subject: str, ext: str, dates: tuple[str, str] = valid) -> Leaf:
        key, csr = request(stem, subject)
        cert = d / f"{stem}.crt"
        sign(ca, csr, cert, ext, dates)
        bundle = d / f"{stem}.pem"
        bundle.write_text(cert.read_text() + key.read_text())
        return Leaf(cert=cert, key=key, bundle=bundle)

    expired_dates = (_asn1_time(now - dt.timedelta(days=30)), _asn1_time(now - dt.timedelta(days=1)))
    return Certs(
        dir=d,
        ca_cert=cas["good"][0], ca_key=cas["good"][1],
        wrong_ca_cert=cas["wrong"][0], wrong_ca_key=cas["wrong"][1],
        server=leaf("server", "good", f"/CN={cn}", "ext_server"),
        wrong_host=leaf("wrong-host", "good", "/CN=wrong.example", "ext_wrong_host"),
        expired=leaf("expired", "good", f"/CN={cn}", "ext_server", expired_dates),
        untrusted=leaf("untrusted", "wrong", f"/CN={cn}", "ext_server"),
        client=leaf("client", "good", f"/CN={client_name}", "ext_client"),
        untrusted_client=leaf("untrusted-client", "wrong", f"/CN={client_name}", "ext_client"),
        dns_names=dns_names, ip_addresses=ip_addresses, client_name=client_name,
    )
