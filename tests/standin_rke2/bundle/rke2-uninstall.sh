#!/bin/sh
# Removes everything the stand-in install put down, like the real rke2-uninstall.sh of a tarball install:
# stops all processes (rke2-killall.sh), unregisters the services, deletes binaries, units, init scripts,
# /etc/rancher/rke2, /etc/rancher/node, the data dir, and finally this script itself.  As in the real script
# the data dir is RKE2_DATA_DIR (default /var/lib/rancher/rke2): config.yaml's data-dir is not read, so a node
# installed with another data-dir must be uninstalled with RKE2_DATA_DIR set.
set -e

if [ "$(id -u)" != "0" ]; then
    echo "rke2-uninstall.sh must be run as root" >&2
    exit 1
fi

INSTALL_RKE2_ROOT=/usr/local
RKE2_DATA_DIR=${RKE2_DATA_DIR:-/var/lib/rancher/rke2}

uninstall_killall() {
    if [ -x "${INSTALL_RKE2_ROOT}/bin/rke2-killall.sh" ]; then
        RKE2_DATA_DIR="${RKE2_DATA_DIR}" "${INSTALL_RKE2_ROOT}/bin/rke2-killall.sh"
    fi
}

uninstall_disable_services() {
    if [ -d /run/systemd/system ]; then
        systemctl disable rke2-server rke2-agent 2>/dev/null || true
        systemctl reset-failed rke2-server rke2-agent 2>/dev/null || true
    fi
    for type in server agent; do
        if command -v update-rc.d >/dev/null 2>&1 && ls /etc/rc?.d/[SK]??rke2-${type} >/dev/null 2>&1; then
            update-rc.d -f "rke2-${type}" remove >/dev/null 2>&1 || true
        fi
        rm -f "/etc/init.d/rke2-${type}"
    done
}

uninstall_remove_files() {
    rm -f "${INSTALL_RKE2_ROOT}/lib/systemd/system/rke2-server.service" \
          "${INSTALL_RKE2_ROOT}/lib/systemd/system/rke2-server.env" \
          "${INSTALL_RKE2_ROOT}/lib/systemd/system/rke2-agent.service" \
          "${INSTALL_RKE2_ROOT}/lib/systemd/system/rke2-agent.env" \
          "${INSTALL_RKE2_ROOT}/bin/rke2" \
          "${INSTALL_RKE2_ROOT}/bin/rke2-killall.sh"
    rm -f /etc/systemd/system/rke2-server.service /etc/systemd/system/rke2-agent.service
    rm -rf "${INSTALL_RKE2_ROOT}/share/rke2" /run/rke2
    rm -rf /etc/rancher/rke2 /etc/rancher/node
    rm -d /etc/rancher 2>/dev/null || true
    rm -rf /var/lib/kubelet
    rm -rf "${RKE2_DATA_DIR}"
    rm -d /var/lib/rancher 2>/dev/null || true
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
}

uninstall_remove_self() {
    rm -f "${INSTALL_RKE2_ROOT}/bin/rke2-uninstall.sh"
}

uninstall_killall
uninstall_disable_services
uninstall_remove_files
uninstall_remove_self
echo "rke2 uninstalled"
