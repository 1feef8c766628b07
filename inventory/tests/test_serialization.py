from __future__ import annotations

import json

import pytest
import yaml

from clusters.fields import Secret
from inventory.serialization import display_yaml, load_ansible_data, serialize_extravars, serialize_inventory

TRICKY_STRINGS = [
    "v1.30",
    "1.30",
    "on",
    "off",
    "no",
    "yes",
    "0640",
    "0x1F",
    "1e3",
    "null",
    "~",
    "",
    "2024-01-01",
    "a: b",
    "a #b",
    "- item",
    "*alias",
    "&anchor",
    "!!python/object/apply:os.system ['id']",
    "key=value other=1",
    "{{ lookup('pipe', 'id') }}",
    "{% if true %}x{% endif %}",
    "{# c #}",
    "ünïcødé ✓",
    "trailing ",
]


def templar():
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    return Templar(loader=DataLoader())


def is_trusted(value) -> bool:
    from ansible._internal._datatag._tags import TrustedAsTemplate

    return TrustedAsTemplate.is_tagged_on(value)


@pytest.mark.parametrize("value", TRICKY_STRINGS)
def test_strings_load_in_ansible_as_the_same_untrusted_strings(value):
    loaded = load_ansible_data(serialize_inventory({"all": {"vars": {"v": value, "l": [value], "d": {"k": value}}}}))
    variables = loaded["all"]["vars"]
    for item in (variables["v"], variables["l"][0], variables["d"]["k"]):
        assert type(item) is not bool and isinstance(item, str) and item == value
        assert not is_trusted(item)
        assert templar().template(item) == value


def test_untrusted_marking_is_what_keeps_ansible_from_templating():
    # The same value written as plain JSON is trusted, and Ansible would render it.
    loaded = load_ansible_data(json.dumps({"v": "{{ 1 + 1 }}"}))
    assert is_trusted(loaded["v"]) and templar().template(loaded["v"]) == 2
    loaded = load_ansible_data(serialize_extravars({"v": "{{ 1 + 1 }}"}))
    assert not is_trusted(loaded["v"]) and templar().template(loaded["v"]) == "{{ 1 + 1 }}"


def test_types_other_than_strings_are_kept():
    data = {"port": 22, "become": True, "off": False, "ratio": 0.5, "none": None, "list": [1, "a", [True]], "empty": {}}
    assert load_ansible_data(serialize_inventory(data)) == data
    assert json.loads(serialize_inventory({"a": ("x", 1)})) == {"a": [{"__ansible_unsafe": "x"}, 1]}


@pytest.mark.parametrize(
    "key", ["{{ x }}", "a b", "__ansible_unsafe", "__ansible_vault", "_private", "a:b", "a\nb", "", 1]
)
def test_keys_outside_the_safe_alphabet_are_refused(key):
    with pytest.raises(ValueError, match="not a valid name"):
        serialize_inventory({"all": {"hosts": {key: {}}}})
    with pytest.raises(ValueError, match="not a valid name"):
        serialize_extravars({key: "x"})


@pytest.mark.parametrize(
    "key", ["m1", "node-1.example.com", "kubelet-arg+", "rke2_node_ip", "ansible_host", "10.0.0.1"]
)
def test_names_used_in_inventories_are_accepted(key):
    assert key in json.loads(serialize_inventory({key: 1}))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), object(), {1, 2}, b"bytes"])
def test_values_without_a_faithful_form_are_refused(value):
    with pytest.raises(ValueError):
        serialize_inventory({"v": value})


def test_secrets_only_go_to_extravars():
    secret = Secret("s3cr3t-token")
    with pytest.raises(ValueError, match="secret"):
        serialize_inventory({"all": {"vars": {"rke2_token": secret}}})
    text = serialize_extravars({"rke2_token": secret})
    assert load_ansible_data(text) == {"rke2_token": "s3cr3t-token"}


def test_display_yaml_is_readable_and_masks_secrets():
    text = display_yaml({"all": {"vars": {"b": "on", "a": "{{ x }}", "t": Secret("s3cr3t")}}})
    assert "s3cr3t" not in text
    assert yaml.safe_load(text) == {"all": {"vars": {"b": "on", "a": "{{ x }}", "t": "********"}}}
    assert text.index("b:") < text.index("a:")  # insertion order, as rendered
