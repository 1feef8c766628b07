"""Kubernetes object helpers: timestamps, selectors, patches, Status and Table responses."""

import copy
import datetime
import time
import uuid


def now_rfc3339(ts=None):
    ts = time.time() if ts is None else ts
    return datetime.datetime.fromtimestamp(int(ts), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro(ts=None):
    ts = time.time() if ts is None else ts
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text):
    if not text:
        return 0.0
    text = text.rstrip("Z")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.UTC).timestamp()
        except ValueError:
            continue
    return 0.0


def new_uid():
    return str(uuid.uuid4())


def human_duration(seconds):
    """Like k8s.io/apimachinery/pkg/util/duration.HumanDuration (what kubectl prints as AGE)."""
    seconds = int(max(seconds, 0))
    if seconds < 120:
        return "%ds" % seconds
    minutes = seconds // 60
    if minutes < 10:
        rem = seconds % 60
        return "%dm%ds" % (minutes, rem) if rem else "%dm" % minutes
    if minutes < 180:
        return "%dm" % minutes
    hours = seconds // 3600
    if hours < 8:
        rem = minutes % 60
        return "%dh%dm" % (hours, rem) if rem else "%dh" % hours
    if hours < 48:
        return "%dh" % hours
    if hours < 24 * 8:
        rem = hours % 24
        return "%dd%dh" % (hours // 24, rem) if rem else "%dd" % (hours // 24)
    if hours < 24 * 365 * 2:
        return "%dd" % (hours // 24)
    return "%dy" % (hours // 24 // 365)


# --- Status ---------------------------------------------------------------------------------------------

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def status(code, message, reason=None, name=None, kind=None, group=""):
    obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason or _REASONS.get(code, ""),
        "code": code,
    }
    if name or kind:
        obj["details"] = {"name": name or "", "group": group, "kind": kind or ""}
    return obj


class APIError(Exception):
    def __init__(self, code, message, reason=None, name=None, kind=None, group=""):
        super().__init__(message)
        self.code = code
        self.body = status(code, message, reason=reason, name=name, kind=kind, group=group)


def not_found(resource, name, group=""):
    qualified = "%s.%s" % (resource, group) if group else resource
    return APIError(404, '%s "%s" not found' % (qualified, name), name=name, kind=resource, group=group)


def already_exists(resource, name):
    return APIError(409, '%s "%s" already exists' % (resource, name), reason="AlreadyExists", name=name, kind=resource)


def conflict(resource, name):
    return APIError(
        409,
        'Operation cannot be fulfilled on %s "%s": the object has been modified; please apply your changes '
        "to the latest version and try again" % (resource, name),
        name=name,
        kind=resource,
    )


# --- selectors ------------------------------------------------------------------------------------------


def parse_label_selector(text):
    """Return a predicate over a labels dict.  Supports =, ==, !=, in (), notin (), key, !key."""
    if not text:
        return lambda labels: True
    terms = []
    depth = 0
    current = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    terms.append("".join(current).strip())
    checks = []
    for term in terms:
        if not term:
            continue
        lowered = term.replace("\t", " ")
        if " notin " in lowered or " in " in lowered:
            negate = " notin " in lowered
            key, _, rest = lowered.partition(" notin " if negate else " in ")
            values = {v.strip() for v in rest.strip().strip("()").split(",") if v.strip()}
            key = key.strip()
            if negate:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: k in labels and labels[k] in vs)
        elif "!=" in term:
            key, value = (p.strip() for p in term.split("!=", 1))
            checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "==" in term or "=" in term:
            key, value = (p.strip() for p in term.replace("==", "=").split("=", 1))
            checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.startswith("!"):
            key = term[1:].strip()
            checks.append(lambda labels, k=key: k not in labels)
        else:
            checks.append(lambda labels, k=term: k in labels)
    return lambda labels: all(check(labels or {}) for check in checks)


def _field(obj, path):
    value = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return ""
        value = value.get(part)
    return "" if value is None else str(value)


def parse_field_selector(text):
    if not text:
        return lambda obj: True
    checks = []
    for term in text.split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            path, value = (part.strip() for part in term.split("!=", 1))
            checks.append(lambda obj, p=path, v=value: _field(obj, p) != v)
        else:
            path, value = (part.strip() for part in term.replace("==", "=").split("=", 1))
            checks.append(lambda obj, p=path, v=value: _field(obj, p) == v)
    return lambda obj: all(check(obj) for check in checks)


# --- patches --------------------------------------------------------------------------------------------


def merge_patch(target, patch, strategic=False):
    """RFC 7386 JSON merge patch; with ``strategic`` the ``$patch``/``$setElementOrder``/``$retainKeys``
    directives kubectl may send are honoured or ignored.  Lists are replaced (true for the fields nodes and
    pods expose to kubectl: labels/annotations are maps, ``spec.taints`` has no merge strategy)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if strategic and patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    if strategic and patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if strategic and key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = merge_patch(result.get(key), value, strategic)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    return result


def _pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise APIError(422, "invalid JSON pointer %r" % path)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(target, ops):
    doc = copy.deepcopy(target)
    if not isinstance(ops, list):
        raise APIError(400, "json patch must be a list of operations")
    for op in ops:
        kind = op.get("op")
        parts = _pointer(op.get("path", ""))
        if not parts:
            raise APIError(422, "cannot patch the document root")
        parent = doc
        for part in parts[:-1]:
            if isinstance(parent, list) and part.isdigit() and int(part) < len(parent):
                parent = parent[int(part)]
            elif isinstance(parent, dict) and part in parent:
                parent = parent[part]
            else:
                raise APIError(422, "path %s does not exist" % op.get("path"))
        last = parts[-1]
        try:
            if kind in ("add", "replace"):
                if isinstance(parent, list):
                    if last == "-":
                        parent.append(copy.deepcopy(op.get("value")))
                    elif kind == "add":
                        parent.insert(int(last), copy.deepcopy(op.get("value")))
                    else:
                        parent[int(last)] = copy.deepcopy(op.get("value"))
                else:
                    if kind == "replace" and last not in parent:
                        raise APIError(422, "path %s does not exist" % op.get("path"))
                    parent[last] = copy.deepcopy(op.get("value"))
            elif kind == "remove":
                if isinstance(parent, list):
                    parent.pop(int(last))
                else:
                    if last not in parent:
                        raise APIError(422, "path %s does not exist" % op.get("path"))
                    del parent[last]
            elif kind == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
                if current != op.get("value"):
                    raise APIError(422, "test operation failed for %s" % op.get("path"))
            else:
                raise APIError(422, "unsupported json patch operation %r" % kind)
        except (IndexError, ValueError, KeyError, TypeError):
            raise APIError(422, "invalid json patch operation on %s" % op.get("path")) from None
    return doc


# --- tables ---------------------------------------------------------------------------------------------


def column(name, kind="string", priority=0, fmt="", description=""):
    return {"name": name, "type": kind, "format": fmt, "description": description, "priority": priority}


def partial_metadata(obj):
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def table(columns, rows, resource_version, include_object="Metadata"):
    out_rows = []
    for obj, cells in rows:
        row = {"cells": cells}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = partial_metadata(obj)
        out_rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": str(resource_version)},
        "columnDefinitions": columns,
        "rows": out_rows,
    }


def age(obj):
    created = parse_time(obj.get("metadata", {}).get("creationTimestamp"))
    return human_duration(time.time() - created) if created else "<unknown>"
