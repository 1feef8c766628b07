#!/bin/sh
# Stops every process the rke2 stand-in started on this host: the rke2 server/agent process and the etcd it
# runs.  Like the real script it stops the units first when systemd runs (Restart=always would start a
# killed rke2 again) and finds the node's containers - here: its etcd - under RKE2_DATA_DIR (default
# /var/lib/rancher/rke2; the script does not read config.yaml).  Processes are matched on command line AND
# on this host's mount and network namespaces, so that other test hosts sharing the kernel are never
# touched.  It does not touch the services' registration; starting the service starts the node again.
set -u

if [ "$(id -u)" != "0" ]; then
    echo "rke2-killall.sh must be run as root" >&2
    exit 1
fi

RKE2_DATA_DIR=${RKE2_DATA_DIR:-/var/lib/rancher/rke2}
RUN_DIR=/run/rke2

if [ -d /run/systemd/system ]; then
    systemctl stop rke2-server.service 2>/dev/null || true
    systemctl stop rke2-agent.service 2>/dev/null || true
fi

self_mnt=$(readlink /proc/self/ns/mnt)
self_net=$(readlink /proc/self/ns/net)

find_pids() {
    found=""
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [ "$pid" = "$$" ] && continue
        [ "$(readlink "$dir/ns/mnt" 2>/dev/null)" = "$self_mnt" ] || continue
        [ "$(readlink "$dir/ns/net" 2>/dev/null)" = "$self_net" ] || continue
        cmd=$(tr '\0' ' ' < "$dir/cmdline" 2>/dev/null) || continue
        case "$cmd" in
            */bin/rke2\ server*|*/bin/rke2\ agent*|*/bin/rke2\ --debug\ *) found="$found $pid" ;;
            */etcd\ --data-dir=${RKE2_DATA_DIR}/server/db/etcd\ *) found="$found $pid" ;;
        esac
    done
    echo "$found"
}

pids=$(find_pids)
if [ -n "$(echo "$pids" | tr -d ' ')" ]; then
    echo "+ kill -TERM$pids"
    kill -TERM $pids 2>/dev/null
    i=0
    while [ $i -lt 50 ]; do
        remaining=""
        for pid in $pids; do
            kill -0 "$pid" 2>/dev/null && remaining="$remaining $pid"
        done
        [ -z "$remaining" ] && break
        sleep 0.1
        i=$((i + 1))
    done
    if [ -n "$remaining" ]; then
        echo "+ kill -KILL$remaining"
        kill -KILL $remaining 2>/dev/null
    fi
fi

rm -f "${RUN_DIR}/rke2-server.pid" "${RUN_DIR}/rke2-server.ready" \
      "${RUN_DIR}/rke2-agent.pid" "${RUN_DIR}/rke2-agent.ready" \
      "${RKE2_DATA_DIR}/server/etcd.pid"
exit 0
