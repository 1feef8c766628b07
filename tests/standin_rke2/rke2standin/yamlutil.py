"""YAML for rke2's flat config files and for the kubeconfig it writes.

The target's system Python may lack PyYAML.  ``load`` uses PyYAML when it can be imported (full YAML,
like the real binary) and otherwise a parser for the subset rke2 config files use: a top-level mapping whose
values are scalars, flow sequences (``[a, b]``) or block sequences of scalars.  Anything else is rejected
with the line number, never guessed.  ``dump`` serialises nested dicts/lists of scalars.
"""

import json
import re


class YAMLError(ValueError):
    pass


_PLAIN_NULL = {"", "~", "null", "Null", "NULL"}
_PLAIN_TRUE = {"true", "True", "TRUE"}
_PLAIN_FALSE = {"false", "False", "FALSE"}
_INT_RE = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_KEY_RE = re.compile(r"^([A-Za-z0-9_.+-]+)\s*:(?:\s+(.*)|$)")


def load(text):
    try:
        import yaml
    except ImportError:
        return load_subset(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise YAMLError(str(exc)) from None


def _strip_comment(line):
    quote = None
    i = 0
    while i < len(line):
        ch = line[i]
        if quote == "'":
            if ch == "'":
                if line[i + 1 : i + 2] == "'":
                    i += 1
                else:
                    quote = None
        elif quote == '"':
            if ch == "\\":
                i += 1
            elif ch == '"':
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
        i += 1
    return line.rstrip()


def _scalar(token, lineno):
    token = token.strip()
    if not token:
        return None
    if token[0] == '"':
        if len(token) < 2 or token[-1] != '"':
            raise YAMLError("line %d: unterminated double-quoted string" % lineno)
        try:
            return json.loads(token)
        except ValueError:
            raise YAMLError("line %d: unsupported escape in double-quoted string" % lineno) from None
    if token[0] == "'":
        if len(token) < 2 or token[-1] != "'":
            raise YAMLError("line %d: unterminated single-quoted string" % lineno)
        return token[1:-1].replace("''", "'")
    if token[0] in "&*!|>{%@`":
        raise YAMLError("line %d: unsupported YAML construct %r" % (lineno, token[:10]))
    if token in _PLAIN_NULL:
        return None
    if token in _PLAIN_TRUE:
        return True
    if token in _PLAIN_FALSE:
        return False
    if _INT_RE.match(token) and not (token.lstrip("+-").startswith("0") and len(token.lstrip("+-")) > 1):
        return int(token)
    return token


def _flow_list(token, lineno):
    inner = token.strip()[1:-1]
    items = []
    current = []
    quote = None
    for ch in inner:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch == ",":
            items.append("".join(current))
            current = []
        elif ch in "[]{}":
            raise YAMLError("line %d: nested flow collections are not supported" % lineno)
        else:
            current.append(ch)
    if quote:
        raise YAMLError("line %d: unterminated string in flow sequence" % lineno)
    tail = "".join(current)
    if tail.strip() or items:
        items.append(tail)
    return [_scalar(item, lineno) for item in items if item.strip() != "" or False]


def _value(token, lineno):
    token = token.strip()
    if token.startswith("["):
        if not token.endswith("]"):
            raise YAMLError("line %d: unterminated flow sequence" % lineno)
        return _flow_list(token, lineno)
    return _scalar(token, lineno)


def load_subset(text):
    result = {}
    pending_key = None
    pending_indent = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YAMLError("line %d: tabs are not allowed for indentation" % lineno)
        line = _strip_comment(raw)
        if not line.strip():
            continue
        if line.strip() in ("---", "...") and not line.startswith(" "):
            if line.strip() == "---" and result:
                raise YAMLError("line %d: multiple documents are not supported" % lineno)
            continue
        indent = len(line) - len(line.lstrip(" "))
        stripped = line.strip()
        if stripped == "-" or stripped.startswith("- "):
            if pending_key is None:
                raise YAMLError("line %d: sequence item without a key" % lineno)
            if pending_indent is None:
                pending_indent = indent
            elif indent != pending_indent:
                raise YAMLError("line %d: inconsistent sequence indentation" % lineno)
            item = stripped[1:].strip()
            if item.startswith("[") or _KEY_RE.match(item):
                raise YAMLError("line %d: nested collections are not supported" % lineno)
            if not isinstance(result[pending_key], list):
                result[pending_key] = []
            result[pending_key].append(_scalar(item, lineno))
            continue
        if indent:
            raise YAMLError("line %d: nested mappings are not supported" % lineno)
        match = _KEY_RE.match(stripped)
        if not match:
            if stripped.startswith(("'", '"')):
                raise YAMLError("line %d: quoted keys are not supported" % lineno)
            raise YAMLError("line %d: expected 'key: value'" % lineno)
        key, rest = match.group(1), match.group(2)
        if key in result:
            raise YAMLError("line %d: duplicate key %r" % (lineno, key))
        if rest is None or rest.strip() == "":
            result[key] = None
            pending_key, pending_indent = key, None
        else:
            result[key] = _value(rest, lineno)
            pending_key, pending_indent = None, None
    return result


_YAML11_SPECIAL = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}
_SAFE_PLAIN = re.compile(r"^[A-Za-z0-9_./@-][A-Za-z0-9_./@:+=-]*$")


def _dump_scalar(value):
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if (
        _SAFE_PLAIN.match(text)
        and not text[0].isdigit()
        and text[0] not in "-."
        and text.lower() not in _YAML11_SPECIAL
        and _scalar(text, 0) == text
    ):
        return text
    return json.dumps(text)


def dump(obj):
    """Serialise dicts/lists of scalars as block YAML (sequences indented like kubectl writes them)."""
    lines = []

    def emit_map(mapping, indent, first_prefix=None):
        for index, (key, value) in enumerate(mapping.items()):
            if index == 0 and first_prefix is not None:
                lead = " " * (indent - len(first_prefix)) + first_prefix
            else:
                lead = " " * indent
            name = _dump_scalar(key)
            if isinstance(value, dict) and value:
                lines.append(lead + name + ":")
                emit_map(value, indent + 2)
            elif isinstance(value, list) and value:
                lines.append(lead + name + ":")
                emit_list(value, indent)
            else:
                lines.append(lead + name + ": " + _dump_scalar_or_empty(value))

    def emit_list(items, indent):
        for item in items:
            if isinstance(item, dict) and item:
                emit_map(item, indent + 2, first_prefix="- ")
            elif isinstance(item, list) and item:
                raise YAMLError("nested sequences are not supported")
            else:
                lines.append(" " * indent + "- " + _dump_scalar_or_empty(item))

    if isinstance(obj, dict):
        emit_map(obj, 0)
    elif isinstance(obj, list):
        emit_list(obj, 0)
    else:
        lines.append(_dump_scalar(obj))
    return "\n".join(lines) + "\n"


def _dump_scalar_or_empty(value):
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _dump_scalar(value)
