#!/usr/bin/env python3
"""Reachability between the nodes of a cluster before RKE2 runs on them (standard library only, Python 3.6+).

Nothing listens on RKE2's ports before RKE2 runs, so each node first starts short-lived listeners:

    reachability.py listen --pid-file F --seconds N [--controller-time T] [--tcp PORT ...] [--udp PORT ...]

binds every port it can (TCP: accepts and closes; UDP: echoes datagrams that carry this script's marker), prints one
JSON line (the ports bound, the ports some other process already holds, the node's machine-id and host name, its
clock and, given the controller's clock T when the command was sent, the skew: node minus controller, in seconds),
then serves them in a detached process for at most N seconds, or until ``stop`` ends it. A port already held (RKE2
itself on a node that runs it) is left to its holder: TCP probes connect to it as to the listener.

    reachability.py probe --timeout S --check PORT/PROTO/LISTENERS/SOURCES ... --peer NAME@ADDRESS@TYPE@HELD_UDP ...
        --self NAME --type TYPE

connects (TCP) or sends a datagram and waits for its echo (UDP) to every peer that must be reachable from this node,
in parallel, each bounded by the timeout, and prints one JSON line: the failures ({to, address, port, protocol,
error}), the probes that could not be made (a UDP port held by another program on the peer answers no echo) and the
number of probes. LISTENERS and SOURCES are ``servers`` or ``all``: the nodes that listen on the port and the nodes
that must reach it.

    reachability.py stop --pid-file F

ends the listeners started with the same pid file (checked against the process's start time, never another process).
"""

import argparse
import errno
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

MARKER = b"rke2-preflight "
MAX_WORKERS = 64
RETRY_WORKERS = 8


def _start_time(pid):
    """The start time of process ``pid`` (clock ticks since boot), or None when it does not exist."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields after the last ')' are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19]


def stop(pid_file):
    """Ends the listener recorded in ``pid_file``; True when one was running."""
    try:
        with open(pid_file) as handle:
            pid_text, started = handle.read().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    stopped = False
    if _start_time(pid) == started:
        try:
            os.kill(pid, signal.SIGTERM)
            stopped = True
        except OSError:
            pass
    try:
        os.unlink(pid_file)
    except OSError:
        pass
    return stopped


def _bind(kind, port):
    """A socket bound to ``port`` on every address (IPv6 and IPv4 when the host has IPv6), or an errno."""
    last = None
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            sock = socket.socket(family, kind)
        except OSError as exc:
            last = exc
            continue
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if kind == socket.SOCK_STREAM:
                # Lets a listener start again right after the previous one; never shares a port held by a listener.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(128)
            sock.setblocking(False)
            return sock, None
        except OSError as exc:
            sock.close()
            last = exc
            if exc.errno == errno.EADDRINUSE:
                break
    return None, last


def _serve(sockets, deadline):
    selector = selectors.DefaultSelector()
    for sock in sockets:
        selector.register(sock, selectors.EVENT_READ)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        for key, _ in selector.select(timeout=min(left, 5)):
            sock = key.fileobj
            try:
                if sock.type == socket.SOCK_STREAM:
                    conn, _ = sock.accept()
                    conn.close()
                else:
                    data, peer = sock.recvfrom(512)
                    if data.startswith(MARKER):
                        sock.sendto(data, peer)
            except OSError:
                continue


def listen(args):
    now = time.time()
    stop(args.pid_file)
    bound = {"tcp": [], "udp": []}
    held = {"tcp": [], "udp": []}
    errors = []
    sockets = []
    for protocol, kind, ports in (("tcp", socket.SOCK_STREAM, args.tcp), ("udp", socket.SOCK_DGRAM, args.udp)):
        for port in sorted(set(ports)):
            sock, error = _bind(kind, port)
            if sock is not None:
                sockets.append(sock)
                bound[protocol].append(port)
            elif error is not None and error.errno == errno.EADDRINUSE:
                held[protocol].append(port)
            else:
                errors.append("%d/%s: %s" % (port, protocol, error.strerror if error else "cannot listen"))
    result = {
        "bound": bound,
        "held": held,
        "errors": errors,
        "time": now,
        "skew": None if args.controller_time is None else round(now - args.controller_time, 3),
        "machine_id": _read("/etc/machine-id"),
        "hostname": socket.gethostname(),
    }
    if sockets and _daemonize(args.pid_file):
        # The detached listener.
        try:
            _serve(sockets, time.monotonic() + args.seconds)
        finally:
            try:
                os.unlink(args.pid_file)
            except OSError:
                pass
            os._exit(0)
    for sock in sockets:
        sock.close()
    print(json.dumps(result))
    return 0


def _daemonize(pid_file):
    """Forks the detached listener: True in it, False in the caller (after the listener wrote its pid file)."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        os.read(read_end, 1)  # the listener is detached and recorded
        os.close(read_end)
        return False
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    pid = os.getpid()
    with open(pid_file, "w") as handle:
        handle.write("%d %s\n" % (pid, _start_time(pid)))
    os.write(write_end, b"x")
    os.close(write_end)
    return True


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _error_text(exc):
    if isinstance(exc, socket.timeout):
        return "connection timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the address"
    return exc.strerror or str(exc)


def _probe_tcp(address, port, timeout):
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return None
    except OSError as exc:
        return _error_text(exc)


def _probe_udp(address, port, timeout):
    try:
        family, kind, proto, _, target = socket.getaddrinfo(address, port, 0, socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        return _error_text(exc)
    token = MARKER + os.urandom(8).hex().encode()
    deadline = time.monotonic() + timeout
    refused = False
    try:
        sock.connect(target)
        # A few sends within the timeout: one lost datagram is not a closed port.
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                sock.send(token)
                sock.settimeout(min(left, max(timeout / 3.0, 0.2)))
                while True:
                    if sock.recv(512) == token:
                        return None
            except socket.timeout:
                continue
            except ConnectionRefusedError:
                refused = True
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
            except OSError as exc:
                return _error_text(exc)
    finally:
        sock.close()
    if refused:
        return "port unreachable (nothing listens)"
    return "no echo within %g s" % timeout


def _parse_peer(text):
    name, address, node_type, held = (text.split("@") + ["", "", "", ""])[:4]
    return {
        "name": name,
        "address": address,
        "type": node_type,
        "held_udp": {int(port) for port in held.split(",") if port},
    }


def _parse_check(text):
    port, protocol, listeners, sources = text.split("/")
    return {"port": int(port), "protocol": protocol, "listeners": listeners, "sources": sources}


def probe(args):
    peers = [_parse_peer(text) for text in args.peer]
    checks = [_parse_check(text) for text in args.check]
    planned = []
    skipped = []
    for peer in peers:
        if peer["name"] == args.self:
            continue
        for check in checks:
            if check["sources"] == "servers" and args.type != "server":
                continue
            if check["listeners"] == "servers" and peer["type"] != "server":
                continue
            entry = {
                "to": peer["name"],
                "address": peer["address"],
                "port": check["port"],
                "protocol": check["protocol"],
            }
            if check["protocol"] == "udp" and check["port"] in peer["held_udp"]:
                entry["reason"] = "the port is held by another program on the peer (RKE2's own overlay, say)"
                skipped.append(entry)
            else:
                planned.append(entry)
    lock = threading.Lock()
    failures = []

    def run(entry):
        check = _probe_tcp if entry["protocol"] == "tcp" else _probe_udp
        error = check(entry["address"], entry["port"], args.timeout)
        if error:
            with lock:
                failures.append(dict(entry, error=error))

    if planned:
        with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(planned))) as pool:
            list(pool.map(run, planned))
    # A probe that timed out is made once more, after the others and a few at a time: when many nodes probe at
    # once on busy machines, a probe may not even get the CPU within its timeout. A refusal is an answer, and a
    # port that is really blocked times out again.
    timed_out = [entry for entry in failures if entry["error"].startswith(("connection timed out", "no echo"))]
    if timed_out:
        failures = [entry for entry in failures if entry not in timed_out]
        retry = [{key: value for key, value in entry.items() if key != "error"} for entry in timed_out]
        with ThreadPoolExecutor(max_workers=min(RETRY_WORKERS, len(retry))) as pool:
            list(pool.map(run, retry))
    order = {(e["to"], e["port"], e["protocol"]): index for index, e in enumerate(planned)}
    failures.sort(key=lambda e: order[(e["to"], e["port"], e["protocol"])])
    print(json.dumps({"failures": failures, "skipped": skipped, "probes": len(planned)}))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="Reachability between cluster nodes before RKE2 runs.")
    commands = parser.add_subparsers(dest="command")
    listen_parser = commands.add_parser("listen")
    listen_parser.add_argument("--pid-file", required=True)
    listen_parser.add_argument("--seconds", type=float, required=True)
    listen_parser.add_argument("--controller-time", type=float)
    listen_parser.add_argument("--tcp", type=int, nargs="*", default=[])
    listen_parser.add_argument("--udp", type=int, nargs="*", default=[])
    stop_parser = commands.add_parser("stop")
    stop_parser.add_argument("--pid-file", required=True)
    probe_parser = commands.add_parser("probe")
    probe_parser.add_argument("--self", required=True)
    probe_parser.add_argument("--type", required=True)
    probe_parser.add_argument("--timeout", type=float, default=3.0)
    probe_parser.add_argument("--check", nargs="*", default=[])
    probe_parser.add_argument("--peer", nargs="*", default=[])
    args = parser.parse_args(argv)
    if args.command == "listen":
        return listen(args)
    if args.command == "stop":
        print(json.dumps({"stopped": stop(args.pid_file)}))
        return 0
    if args.command == "probe":
        return probe(args)
    parser.print_usage(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
