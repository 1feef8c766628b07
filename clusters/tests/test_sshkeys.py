"""SSH private keys: real keys generated at test time, parsed like an operator's; errors name the field."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ed25519, rsa
from django.core.exceptions import ValidationError

from clusters.fields import reveal
from clusters.models import SSHCredential
from clusters.sshkeys import KeyError_, known_hosts_problems, load_private_key, normalize_private_key

from .factories import ssh_private_key

PASSPHRASE = "s3cret passphrase"


def ssh_keygen_fingerprint(key_text: str, passphrase: str = "") -> str:
    """The fingerprint OpenSSH itself computes, from the public half (no passphrase needed on the command line)."""
    loader = serialization.load_ssh_private_key if "OPENSSH" in key_text else serialization.load_pem_private_key
    key = loader(key_text.encode(), passphrase.encode() or None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "key.pub")
        with open(path, "wb") as handle:
            handle.write(public + b"\n")
        output = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", path], check=True, capture_output=True, text=True
        )
    return output.stdout.split()[1]


@pytest.mark.parametrize(
    ("kind", "fmt", "passphrase"),
    [
        ("ed25519", "openssh", ""),
        ("ed25519", "openssh", PASSPHRASE),
        ("ed25519", "pkcs8", PASSPHRASE),
        ("rsa", "openssh", ""),
        ("rsa", "openssh", PASSPHRASE),
        ("rsa", "traditional", ""),
        ("rsa", "traditional", PASSPHRASE),
        ("rsa", "pkcs8", PASSPHRASE),
    ],
)
def test_real_keys_parse_and_match_ssh_keygen(kind, fmt, passphrase):
    text = ssh_private_key(kind, passphrase=passphrase, fmt=fmt)
    fingerprint = load_private_key(text, passphrase)
    assert fingerprint.startswith("SHA256:")
    assert fingerprint == ssh_keygen_fingerprint(text, passphrase)


def test_pasted_key_with_crlf_and_no_final_newline_is_accepted_and_normalized():
    text = ssh_private_key("ed25519")
    pasted = text.strip().replace("\n", "\r\n")
    assert load_private_key(pasted) == load_private_key(text)
    assert normalize_private_key(pasted) == text.strip() + "\n"


def _error(text: str, passphrase: str = "") -> KeyError_:
    with pytest.raises(KeyError_) as info:
        load_private_key(text, passphrase)
    return info.value


@pytest.mark.parametrize("fmt", ["openssh", "pkcs8", "traditional"])
def test_wrong_passphrase_blames_the_passphrase(fmt):
    error = _error(
        ssh_private_key("rsa" if fmt == "traditional" else "ed25519", passphrase=PASSPHRASE, fmt=fmt), "wrong"
    )
    assert error.field == "passphrase"
    assert "does not open" in error.message


@pytest.mark.parametrize("fmt", ["openssh", "pkcs8"])
def test_missing_passphrase_is_asked_for(fmt):
    error = _error(ssh_private_key("ed25519", passphrase=PASSPHRASE, fmt=fmt))
    assert (error.field, error.message) == ("passphrase", "This private key is encrypted: enter its passphrase.")


def test_passphrase_for_an_unencrypted_key_is_refused():
    error = _error(ssh_private_key("ed25519"), "unneeded")
    assert error.field == "passphrase"
    assert "not encrypted" in error.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("hello world", "not a private key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----\n", "damaged"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\n!!!!\n-----END OPENSSH PRIVATE KEY-----\n", "damaged"),
        ("-----BEGIN PRIVATE KEY-----\nAAAAAAAA\n-----END PRIVATE KEY-----\n", "damaged"),
        ("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n", "PuTTY"),
        ("   \n", "required"),
    ],
)
def test_garbage_blames_the_key(text, fragment):
    error = _error(text)
    assert error.field == "private_key"
    assert fragment in error.message


def test_truncated_key_blames_the_key():
    text = ssh_private_key("ed25519")
    lines = text.strip().splitlines()
    damaged = "\n".join(lines[:2] + lines[-1:]) + "\n"
    assert _error(damaged).field == "private_key"


def test_public_key_pasted_instead_of_the_private_one():
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    error = _error(public + " user@host")
    assert error.field == "private_key"
    assert "public key" in error.message


def test_weak_and_obsolete_keys_are_refused():
    small = (
        rsa.generate_private_key(65537, 1024)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        .decode()
    )
    assert "1024 bits" in _error(small).message
    old = (
        dsa.generate_private_key(2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    assert "DSA" in _error(old).message


def test_errors_never_contain_key_material():
    text = ssh_private_key("rsa", passphrase=PASSPHRASE, fmt="traditional")
    body_lines = [line for line in text.splitlines() if line and "-----" not in line and ":" not in line]
    for attempt in (("wrong",), ("",)):
        message = _error(text, *attempt).message
        assert not any(line[:20] in message for line in body_lines)
        assert PASSPHRASE not in message


# Through the model: full_clean() reports errors against the form fields.


@pytest.mark.django_db
def test_credential_clean_names_the_field_and_stores_the_fingerprint():
    text = ssh_private_key("ed25519", passphrase=PASSPHRASE)
    credential = SSHCredential(name="ops", private_key=text.strip(), passphrase=PASSPHRASE)
    credential.full_clean()
    credential.save()
    stored = SSHCredential.objects.get(pk=credential.pk)
    assert stored.public_key_fingerprint == load_private_key(text, PASSPHRASE)
    assert reveal(stored.private_key) == text.strip() + "\n"  # normalized: ssh-add needs the final newline

    for private_key, passphrase, field in (
        ("garbage", "", "private_key"),
        (text, "wrong", "passphrase"),
        (text, "", "passphrase"),
    ):
        candidate = SSHCredential(name="other", private_key=private_key, passphrase=passphrase)
        with pytest.raises(ValidationError) as info:
            candidate.full_clean()
        assert field in info.value.message_dict, info.value.message_dict


@pytest.mark.django_db
def test_credential_fields_are_validated():
    credential = SSHCredential(name="ops", username="root; rm -rf /", port=70000, private_key=ssh_private_key())
    with pytest.raises(ValidationError) as info:
        credential.full_clean()
    errors = info.value.message_dict
    assert "username" in errors
    assert "port" in errors
    blank = SSHCredential(name="blank", private_key="")
    with pytest.raises(ValidationError) as info:
        blank.full_clean()
    assert list(info.value.message_dict) == ["private_key"]


def test_known_hosts_lines_are_checked():
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    good = f"# scanned\n10.0.0.11,node1 {line}\n@cert-authority *.example.com {line} ca\n\n"
    assert known_hosts_problems(good) == []
    problems = known_hosts_problems(f"10.0.0.11 {line}\nnode2 ssh-ed25519\nnode3 ssh-rsa {line.split()[1]}\n")
    assert problems == [
        "Line 2: expected 'host[,host...] key-type key', as ssh-keyscan prints it.",
        "Line 3: the 'ssh-rsa' key is not valid base64 key data of that type.",
    ]


@pytest.mark.django_db
def test_credential_reports_bad_known_hosts_with_the_key_error():
    credential = SSHCredential(name="ops", private_key="garbage", known_hosts="just-a-host")
    with pytest.raises(ValidationError) as info:
        credential.full_clean()
    assert set(info.value.message_dict) == {"private_key", "known_hosts"}


def test_an_unlocked_key_is_the_same_key_without_a_passphrase(tmp_path) -> None:
    import subprocess

    from clusters.sshkeys import unlocked_private_key

    path = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(path)], check=True)
    unlocked = unlocked_private_key(path.read_text(), "a passphrase")

    assert load_private_key(unlocked) == load_private_key(path.read_text(), "a passphrase")
    path.write_text(unlocked)
    path.chmod(0o600)
    public = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", str(path)], capture_output=True, text=True, check=True)
    assert public.stdout.split()[:2] == (tmp_path / "key.pub").read_text().split()[:2]
