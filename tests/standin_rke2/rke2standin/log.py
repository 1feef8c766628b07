"""logrus-style logging (``time=... level=... msg=...``) to stderr, like the real rke2 binary.

Under systemd stderr goes to the journal.  The SysV init script has no journal: it passes
``RKE2_STANDIN_LOG_LINK`` and the process then writes stdout/stderr to ``<data-dir>/<role>/logs/rke2.log`` and
points that link at the file (see :func:`to_file`)."""

import os
import sys
import threading
import time

_lock = threading.Lock()
_debug = False
# Lines logged before the log file is known (config parsing): written to it first by to_file().
_early = []
_EARLY_MAX = 200


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
        if _early is not None and len(_early) < _EARLY_MAX:
            _early.append(line)
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def keep_on_stderr():
    """The process logs to stderr for good (systemd's journal): stop remembering early lines."""
    global _early
    with _lock:
        _early = None


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


def to_file(path, link=None):
    """Append stdout and stderr (file descriptors 1 and 2, so children and tracebacks too) to ``path``."""
    global _early
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    with _lock:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stderr.write("".join(_early or []))
        sys.stderr.flush()
        _early = None
    os.close(fd)
    if link:
        tmp = link + ".tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(path, tmp)
        os.replace(tmp, link)
