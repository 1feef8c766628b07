"""Certificates through the ``openssl`` CLI (the target's system Python has no crypto library).

Layout follows rke2's ``/var/lib/rancher/rke2/server/tls``: ``server-ca``, ``client-ca``, ``etcd/server-ca``,
``etcd/peer-ca`` plus leaf certificates signed by them.  All keys are ECDSA P-256.
"""

import hashlib
import ipaddress
import os
import secrets
import subprocess
import tempfile
import time

_MIN_CONF = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n"


class PKIError(Exception):
    pass


def _openssl(*args, input_text=None):
    proc = subprocess.run(["openssl", *args], input=input_text, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PKIError("openssl %s failed: %s" % (args[0], proc.stderr.strip()))
    return proc.stdout


def _write_private(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(data)
    os.replace(path + ".tmp", path)


def _write_public(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        handle.write(data)
    os.chmod(path + ".tmp", 0o644)
    os.replace(path + ".tmp", path)


def _genkey():
    return _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout")


def _subject(cn, orgs=()):
    parts = ["/O=%s" % o for o in orgs] + ["/CN=%s" % cn]
    return "".join(parts)


def ensure_ca(crt_path, key_path, cn_prefix):
    """Create a self-signed CA unless both files exist."""
    if os.path.exists(crt_path) and os.path.exists(key_path):
        return False
    key = _genkey()
    with tempfile.TemporaryDirectory() as tmp:
        key_file = os.path.join(tmp, "ca.key")
        conf = os.path.join(tmp, "ca.cnf")
        with open(key_file, "w") as handle:
            handle.write(key)
        with open(conf, "w") as handle:
            handle.write(
                _MIN_CONF
                + "CN = %s@%d\n" % (cn_prefix, int(time.time()))
                + "[v3]\nbasicConstraints = critical,CA:TRUE\n"
                + "keyUsage = critical,digitalSignature,keyEncipherment,keyCertSign\n"
                + "subjectKeyIdentifier = hash\n"
            )
        cert = _openssl(
            "req",
            "-new",
            "-x509",
            "-key",
            key_file,
            "-config",
            conf,
            "-extensions",
            "v3",
            "-days",
            "3650",
            "-sha256",
        )
    _write_private(key_path, key)
    _write_public(crt_path, cert)
    return True


def issue(ca_crt, ca_key, crt_path, key_path, cn, orgs=(), sans=(), server=True, client=True, days=365):
    """Issue a leaf certificate (new key) signed by the given CA."""
    dns = []
    ips = []
    for san in sans:
        if not san:
            continue
        try:
            ips.append(str(ipaddress.ip_address(san)))
        except ValueError:
            dns.append(san)
    usages = []
    if server:
        usages.append("serverAuth")
    if client:
        usages.append("clientAuth")
    ext = [
        "[v3]",
        "basicConstraints = critical,CA:FALSE",
        "keyUsage = critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage = %s" % ",".join(usages),
        "authorityKeyIdentifier = keyid",
    ]
    alt = ["DNS:%s" % d for d in dict.fromkeys(dns)] + ["IP:%s" % i for i in dict.fromkeys(ips)]
    if alt:
        ext.append("subjectAltName = %s" % ",".join(alt))
    key = _genkey()
    with tempfile.TemporaryDirectory() as tmp:
        key_file = os.path.join(tmp, "leaf.key")
        csr_file = os.path.join(tmp, "leaf.csr")
        ext_file = os.path.join(tmp, "ext.cnf")
        conf = os.path.join(tmp, "req.cnf")
        with open(key_file, "w") as handle:
            handle.write(key)
        with open(ext_file, "w") as handle:
            handle.write("\n".join(ext) + "\n")
        with open(conf, "w") as handle:
            dn = "".join("%d.O = %s\n" % (i, o) for i, o in enumerate(orgs)) + ("CN = %s\n" % cn if cn else "")
            handle.write(_MIN_CONF + dn)
        _openssl("req", "-new", "-key", key_file, "-config", conf, "-out", csr_file)
        cert = _openssl(
            "x509",
            "-req",
            "-in",
            csr_file,
            "-CA",
            ca_crt,
            "-CAkey",
            ca_key,
            "-set_serial",
            "0x" + secrets.token_hex(15),
            "-days",
            str(days),
            "-sha256",
            "-extfile",
            ext_file,
            "-extensions",
            "v3",
        )
    _write_private(key_path, key)
    _write_public(crt_path, cert)


def sha256_hex(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def read(path):
    with open(path) as handle:
        return handle.read()


def write_public(path, data):
    _write_public(path, data)


def write_private(path, data):
    _write_private(path, data)
