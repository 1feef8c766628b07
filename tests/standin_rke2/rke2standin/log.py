"""logrus-style logging (``time=... level=... msg=...``) to stderr, like the real rke2 binary."""

import sys
import threading
import time

_lock = threading.Lock()
_debug = False


def set_debug(enabled):
    global _debug
    _debug = bool(enabled)


def _quote(value):
    text = str(value)
    if text and all(c.isalnum() or c in "-_./:@+,=" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _emit(level, msg, fields):
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + "Z"
    parts = ['time="%s"' % stamp, "level=%s" % level, "msg=%s" % _quote(msg)]
    parts.extend("%s=%s" % (k, _quote(v)) for k, v in fields.items())
    line = " ".join(parts) + "\n"
    with _lock:
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def debug(msg, **fields):
    if _debug:
        _emit("debug", msg, fields)


def info(msg, **fields):
    _emit("info", msg, fields)


def warning(msg, **fields):
    _emit("warning", msg, fields)


def error(msg, **fields):
    _emit("error", msg, fields)


def fatal(msg, **fields):
    _emit("fatal", msg, fields)
    raise SystemExit(1)
