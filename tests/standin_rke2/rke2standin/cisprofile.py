"""``profile:`` (``--profile``, ``RKE2_CIS_PROFILE``): the host checks rke2 makes before it starts anything.

The accepted names depend on the release, as in rke2:

* up to v1.30.13, v1.31.9, v1.32.5, v1.33.1: ``cis`` and ``cis-1.23``.  Both validate the host (the ``etcd`` user
  and group on servers, and the kernel parameters of ``share/rke2/rke2-cis-sysctl.conf``) and every problem is
  reported at once; ``cis-1.23`` then stops with a deprecation message.
* from v1.30.14, v1.31.10, v1.32.6, v1.33.2 and v1.34 on: ``cis`` (kernel parameters first, then the ``etcd``
  user and group) and ``etcd`` (only the user and group); ``cis-1.23`` is an invalid value.

Values are read from ``/proc/sys`` like ``sysctl``: a container that cannot set them fails the check.
"""

import grp
import os
import pwd
import re

from . import log

# Name and required value of each kernel parameter; the same list as share/rke2/rke2-cis-sysctl.conf.
KERNEL_PARAMETERS = (
    ("vm.panic_on_oom", 0),
    ("vm.overcommit_memory", 1),
    ("kernel.panic", 10),
    ("kernel.panic_on_oops", 1),
)
# First patch release, by minor, with the ``etcd`` profile (and without ``cis-1.23``).
ETCD_PROFILE_SINCE = {30: 14, 31: 10, 32: 6, 33: 2}
FIRST_MINOR_WITH_ETCD_PROFILE = 34
PROC_SYS = "/proc/sys"


class ProfileError(Exception):
    pass


def has_etcd_profile(version):
    match = re.match(r"^v1\.(\d+)\.(\d+)", version or "")
    if not match:
        return True
    minor, patch = int(match.group(1)), int(match.group(2))
    if minor >= FIRST_MINOR_WITH_ETCD_PROFILE:
        return True
    return minor in ETCD_PROFILE_SINCE and patch >= ETCD_PROFILE_SINCE[minor]


def sysctl(name, proc_sys=PROC_SYS):
    """The integer value of a kernel parameter, read the way rke2 reads it."""
    path = os.path.join(proc_sys, name.replace(".", "/"))
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ProfileError("open %s: %s" % (path, (exc.strerror or str(exc)).lower())) from None
    if len(raw) < 2 or not raw.endswith(b"\n"):
        raise ProfileError("invalid contents: %s" % name)
    text = raw.decode(errors="replace").replace("\n", "")
    try:
        return int(text)
    except ValueError:
        raise ProfileError('strconv.Atoi: parsing "%s": invalid syntax' % text) from None


def kernel_problems(proc_sys=PROC_SYS):
    """Problems with the kernel parameters; a parameter that cannot be read stops the check at once."""
    problems = []
    for name, expected in KERNEL_PARAMETERS:
        value = sysctl(name, proc_sys)
        if value != expected:
            problems.append("invalid kernel parameter value %s=%d - expected %d" % (name, value, expected))
    return problems


def etcd_user_problems(role):
    """The ``etcd`` user and group exist on servers (etcd runs as that user in CIS mode)."""
    if role != "server":
        return []
    problems = []
    try:
        pwd.getpwnam("etcd")
    except KeyError:
        problems.append("missing required: user: unknown user etcd")
    try:
        grp.getgrnam("etcd")
    except KeyError:
        problems.append("missing required: group: unknown group etcd")
    return problems


def _fatal_list(problems):
    # rke2 joins the errors with a newline after each one and logs them as one fatal message.
    log.fatal("".join(problem + "\n" for problem in problems))


def validate(role, cfg, version, proc_sys=PROC_SYS):
    """Exit like rke2 when the host does not satisfy ``cfg['profile']``; returns the profile in effect."""
    profile = cfg.get("profile") or ""
    new_names = has_etcd_profile(version)
    if profile == "":
        log.warning("not running in CIS mode")
        return ""
    if profile == "cis" or (profile == "cis-1.23" and not new_names):
        try:
            if new_names:
                problems = kernel_problems(proc_sys)
                if problems:
                    _fatal_list(problems)
            else:
                problems = etcd_user_problems(role) + kernel_problems(proc_sys)
                if problems:
                    _fatal_list(problems)
        except ProfileError as exc:
            log.fatal(str(exc))
        if cfg.get("protect-kernel-defaults") is False:
            log.fatal("--protect-kernel-defaults must be true when using --profile=%s" % profile)
        cfg["protect-kernel-defaults"] = True
        if not new_names:
            if profile == "cis-1.23":
                log.fatal("cis-1.23 profile is deprecated. Please use 'cis' instead.")
            return profile
    elif not (profile == "etcd" and new_names):
        log.fatal("invalid value provided for --profile flag")
    problems = etcd_user_problems(role)
    if problems:
        _fatal_list(problems)
    return profile
