"""Masking secrets in stored output."""

from __future__ import annotations

import base64
import json

from clusters.engine.redaction import MASK, Redactor, strip_nul
from clusters.tests.factories import ssh_private_key

TOKEN = "3f1c9a7e5b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d"


def test_masks_the_value_wherever_it_appears() -> None:
    redactor = Redactor([TOKEN])
    assert redactor.text(f"token: {TOKEN}\nK10abc::server:{TOKEN}") == f"token: {MASK}\nK10abc::server:{MASK}"


def test_masks_every_line_of_a_multi_line_key() -> None:
    key = ssh_private_key("rsa", bits=2048)
    redactor = Redactor([key])
    body_lines = [line for line in key.splitlines() if not line.startswith("-----")]
    output = "stderr: " + "\n".join(body_lines[3:6])
    masked = redactor.text(output)
    for line in body_lines[3:6]:
        assert line not in masked
    assert redactor.text(key).strip() == MASK
    assert "-----BEGIN" in redactor.text("-----BEGIN OPENSSH PRIVATE KEY-----")  # the armour is not secret


def test_masks_json_escaped_and_base64_forms() -> None:
    key = ssh_private_key()
    redactor = Redactor([TOKEN, key])
    assert key.strip() not in redactor.text(json.dumps({"content": key}))
    for prefix in ("", "a", "ab", "token: "):
        encoded = base64.b64encode(f"{prefix}{TOKEN}\nmore".encode()).decode()
        assert MASK in redactor.text(encoded), prefix


def test_data_is_returned_unchanged_without_secrets_and_copied_with_them() -> None:
    redactor = Redactor([TOKEN])
    clean = {"res": {"msg": "ok", "items": [1, 2.5, None, True]}}
    assert redactor.data(clean) is clean
    dirty = {"res": {"msg": f"x {TOKEN}", "cmd": ["echo", TOKEN]}, f"k{TOKEN}": 1}
    masked = redactor.data(dirty)
    assert TOKEN not in json.dumps(masked)
    assert masked["res"]["cmd"] == ["echo", MASK]
    assert TOKEN in dirty["res"]["msg"]  # the original is not modified


def test_nul_characters_are_removed() -> None:
    redactor = Redactor([])
    assert strip_nul("a\x00b") == "ab"
    assert redactor.text("a\x00b") == "ab"
    assert redactor.data({"a\x00": ["b\x00c"]}) == {"a": ["bc"]}


def test_short_and_empty_values_are_not_secrets() -> None:
    redactor = Redactor(["", None, "abc"])
    assert not redactor
    assert redactor.text("abc abc") == "abc abc"
