#!/bin/sh
# Installer of the stand-in RKE2 bundle used by the integration tests (see tests/standin_rke2/README.md).
# It follows the tarball path of the real rke2 install.sh, from local artifacts or downloaded ones:
#   INSTALL_RKE2_ARTIFACT_PATH=<dir> INSTALL_RKE2_VERSION=<v> INSTALL_RKE2_TYPE=server|agent \
#   INSTALL_RKE2_METHOD=tar sh install.sh
#   INSTALL_RKE2_VERSION=<v> [INSTALL_RKE2_ARTIFACT_URL=<release mirror>] INSTALL_RKE2_TYPE=... sh install.sh
# Without INSTALL_RKE2_ARTIFACT_PATH it downloads rke2.linux-<arch>.tar.gz and sha256sum-<arch>.txt of
# INSTALL_RKE2_VERSION from INSTALL_RKE2_ARTIFACT_URL/<version, "+" as %2B>/ (default: GitHub releases) with curl
# or wget. It refuses a tarball install over RKE2 RPM packages (`rpm -q rke2-common`), verifies the tarball's
# sha256 against sha256sum-<arch>.txt, stages a local airgap image archive, unpacks the tarball into
# INSTALL_RKE2_TAR_PREFIX (default /usr/local) and never starts a service.  On hosts where systemd is not
# running it also installs SysV init scripts /etc/init.d/rke2-server and /etc/init.d/rke2-agent.
set -e

if [ "${DEBUG}" = 1 ]; then
    set -x
fi

info() {
    echo "[INFO] " "$@"
}

warn() {
    echo "[WARN] " "$@" >&2
}

fatal() {
    echo "[ERROR] " "$@" >&2
    exit 1
}

STANDIN_INSTALL_LOG="${STANDIN_INSTALL_LOG:-/var/log/rke2-standin-install.log}"
record() {
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $*" >> "${STANDIN_INSTALL_LOG}" 2>/dev/null || true
}

DEFAULT_TAR_PREFIX="/usr/local"

setup_env() {
    if [ "$(id -u)" != "0" ]; then
        fatal "You need to be root to perform this install"
    fi
    INSTALL_RKE2_ARTIFACT_URL="${INSTALL_RKE2_ARTIFACT_URL:-https://github.com/rancher/rke2/releases/download}"
    INSTALL_RKE2_TYPE="${INSTALL_RKE2_TYPE:-${INSTALL_RKE2_EXEC:-server}}"
    case "${INSTALL_RKE2_TYPE}" in
        server|agent) ;;
        *) fatal "Invalid INSTALL_RKE2_TYPE: ${INSTALL_RKE2_TYPE} (expected server or agent)" ;;
    esac
    INSTALL_RKE2_METHOD="${INSTALL_RKE2_METHOD:-tar}"
    if [ -n "${INSTALL_RKE2_ARTIFACT_PATH}" ] && [ ! -d "${INSTALL_RKE2_ARTIFACT_PATH}" ]; then
        fatal "INSTALL_RKE2_ARTIFACT_PATH ${INSTALL_RKE2_ARTIFACT_PATH} is not a directory"
    fi
    if [ -z "${INSTALL_RKE2_TAR_PREFIX}" ]; then
        INSTALL_RKE2_TAR_PREFIX="${DEFAULT_TAR_PREFIX}"
        if [ -d /usr/local ] && ! touch /usr/local/.rke2-rw-check 2>/dev/null; then
            INSTALL_RKE2_TAR_PREFIX="/opt/rke2"
        fi
        rm -f /usr/local/.rke2-rw-check
    fi
    INSTALL_RKE2_AGENT_IMAGES_DIR="${INSTALL_RKE2_AGENT_IMAGES_DIR:-/var/lib/rancher/rke2/agent/images}"
}

# A tarball install over RKE2 RPM packages is refused, with the real installer's words; RPM installs themselves
# are not something the stand-in can do.
check_method_conflict() {
    case "${INSTALL_RKE2_METHOD}" in
        rpm|yum|dnf)
            fatal "Unsupported INSTALL_RKE2_METHOD: ${INSTALL_RKE2_METHOD} (the stand-in installs tarballs only)"
            ;;
        tar) ;;
        *) fatal "Unsupported INSTALL_RKE2_METHOD: ${INSTALL_RKE2_METHOD} (expected tar)" ;;
    esac
    if rpm -q rke2-common >/dev/null 2>&1; then
        fatal "Cannot perform ${INSTALL_RKE2_METHOD:-tar} install on host with existing RKE2 RPMs - please run rke2-uninstall.sh first"
    fi
}

find_downloader() {
    for candidate in curl wget; do
        DOWNLOADER=$(command -v "${candidate}" 2>/dev/null) || continue
        [ -x "${DOWNLOADER}" ] && return 0
    done
    fatal "can not find curl or wget for downloading files"
}

setup_arch() {
    case "${ARCH:=$(uname -m)}" in
        amd64|x86_64) ARCH=amd64 ;;
        arm64|aarch64) ARCH=arm64 ;;
        s390x) ARCH=s390x ;;
        *) fatal "unsupported architecture ${ARCH}" ;;
    esac
    SUFFIX="linux-${ARCH}"
}

setup_tmp() {
    TMP_DIR=$(mktemp -d -t rke2-install.XXXXXXXXXX)
    TMP_CHECKSUMS="${TMP_DIR}/rke2.checksums"
    TMP_TARBALL="${TMP_DIR}/rke2.tarball"
    cleanup() {
        code=$?
        set +e
        trap - EXIT
        rm -rf "${TMP_DIR}"
        exit ${code}
    }
    trap cleanup INT EXIT
}

sha256_of() {
    sha256sum "$1" | awk '{print $1}'
}

stage_local_checksums() {
    info "staging local checksums from ${INSTALL_RKE2_ARTIFACT_PATH}/sha256sum-${ARCH}.txt"
    [ -f "${INSTALL_RKE2_ARTIFACT_PATH}/sha256sum-${ARCH}.txt" ] || \
        fatal "checksum file ${INSTALL_RKE2_ARTIFACT_PATH}/sha256sum-${ARCH}.txt not found"
    cp -f "${INSTALL_RKE2_ARTIFACT_PATH}/sha256sum-${ARCH}.txt" "${TMP_CHECKSUMS}"
}

# Like the real installer: the all-in-one image archive (rke2-images.linux-<arch>) is copied into the temporary
# folder (mktemp, under /tmp), verified there, then moved to INSTALL_RKE2_AGENT_IMAGES_DIR; only when it exists are
# the per-part archives (rke2-images-<part>.linux-<arch>...) copied along. Every archive it handles, and through
# which folder, is recorded in STANDIN_INSTALL_LOG (tests read it: the real script has no such record).
stage_local_airgap_images() {
    record "artifact path ${INSTALL_RKE2_ARTIFACT_PATH}: $(cd "${INSTALL_RKE2_ARTIFACT_PATH}" && ls -A | tr '\n' ' ')"
    for image in "${INSTALL_RKE2_ARTIFACT_PATH}/rke2-images.${SUFFIX}.tar.zst" \
                 "${INSTALL_RKE2_ARTIFACT_PATH}/rke2-images.${SUFFIX}.tar.gz"; do
        [ -f "${image}" ] || continue
        name=$(basename "${image}")
        info "staging airgap image tarball from ${image}"
        cp -f "${image}" "${TMP_DIR}/rke2-images.tarball"
        record "image archive ${name} copied through ${TMP_DIR}"
        expected=$(grep " ${name}\$" "${TMP_CHECKSUMS}" | awk '{print $1}')
        if [ -n "${expected}" ] && [ "${expected}" != "$(sha256_of "${TMP_DIR}/rke2-images.tarball")" ]; then
            fatal "airgap image tarball ${name} sha256 does not match ${expected}"
        fi
        info "installing airgap tarball to ${INSTALL_RKE2_AGENT_IMAGES_DIR}"
        mkdir -p "${INSTALL_RKE2_AGENT_IMAGES_DIR}"
        mv -f "${TMP_DIR}/rke2-images.tarball" "${INSTALL_RKE2_AGENT_IMAGES_DIR}/${name}"
        for extra in "${INSTALL_RKE2_ARTIFACT_PATH}"/rke2-images-*."${SUFFIX}"*; do
            [ -f "${extra}" ] || continue
            info "installing airgap image from ${extra}"
            cp -f "${extra}" "${INSTALL_RKE2_AGENT_IMAGES_DIR}/"
            record "image archive $(basename "${extra}") copied to ${INSTALL_RKE2_AGENT_IMAGES_DIR}"
        done
        return 0
    done
}

stage_local_tarball() {
    info "staging tarball from ${INSTALL_RKE2_ARTIFACT_PATH}/rke2.${SUFFIX}.tar.gz"
    [ -f "${INSTALL_RKE2_ARTIFACT_PATH}/rke2.${SUFFIX}.tar.gz" ] || \
        fatal "tarball ${INSTALL_RKE2_ARTIFACT_PATH}/rke2.${SUFFIX}.tar.gz not found"
    cp -f "${INSTALL_RKE2_ARTIFACT_PATH}/rke2.${SUFFIX}.tar.gz" "${TMP_TARBALL}"
}

# download FILE URL: fails like the real installer does (set -e): curl says why, wget -q says nothing.
download() {
    case "${DOWNLOADER}" in
        *curl) curl -o "$1" -fsSL "$2" ;;
        *wget) wget -qO "$1" "$2" ;;
        *) fatal "downloader executable not supported: '${DOWNLOADER}'" ;;
    esac
}

release_url() {
    echo "${INSTALL_RKE2_ARTIFACT_URL%/}/$(echo "${INSTALL_RKE2_VERSION}" | sed 's/+/%2B/g')/$1"
}

download_checksums() {
    url=$(release_url "sha256sum-${ARCH}.txt")
    info "downloading checksums at ${url}"
    download "${TMP_CHECKSUMS}" "${url}"
}

download_tarball() {
    url=$(release_url "rke2.${SUFFIX}.tar.gz")
    info "downloading tarball at ${url}"
    download "${TMP_TARBALL}" "${url}"
}

verify_tarball() {
    info "verifying tarball"
    expected=$(grep " rke2.${SUFFIX}.tar.gz\$" "${TMP_CHECKSUMS}" | awk '{print $1}')
    [ -n "${expected}" ] || fatal "no checksum for rke2.${SUFFIX}.tar.gz in sha256sum-${ARCH}.txt"
    actual=$(sha256_of "${TMP_TARBALL}")
    if [ "${expected}" != "${actual}" ]; then
        fatal "download sha256 does not match ${expected}, got ${actual}"
    fi
}

verify_version() {
    mkdir -p "${TMP_DIR}/rke2-tarball"
    tar xzf "${TMP_TARBALL}" -C "${TMP_DIR}/rke2-tarball"
    tarball_version=$("${TMP_DIR}/rke2-tarball/bin/rke2" --version | awk 'NR==1 {print $3}')
    [ -n "${tarball_version}" ] || fatal "unable to read the version of rke2 in the tarball"
    if [ -n "${INSTALL_RKE2_VERSION}" ] && [ "${INSTALL_RKE2_VERSION}" != "${tarball_version}" ]; then
        fatal "tarball contains rke2 ${tarball_version}, but INSTALL_RKE2_VERSION is ${INSTALL_RKE2_VERSION}"
    fi
    info "tarball holds rke2 ${tarball_version}"
}

unpack_tarball() {
    if [ "${INSTALL_RKE2_TAR_PREFIX}" != "${DEFAULT_TAR_PREFIX}" ]; then
        info "updating tarball contents to reflect install path"
        sed -i "s|${DEFAULT_TAR_PREFIX}|${INSTALL_RKE2_TAR_PREFIX}|g" \
            "${TMP_DIR}/rke2-tarball/lib/systemd/system/rke2-server.service" \
            "${TMP_DIR}/rke2-tarball/lib/systemd/system/rke2-agent.service" \
            "${TMP_DIR}/rke2-tarball/share/rke2/init.d/rke2-server" \
            "${TMP_DIR}/rke2-tarball/share/rke2/init.d/rke2-agent" \
            "${TMP_DIR}/rke2-tarball/bin/rke2-uninstall.sh"
    fi
    info "unpacking tarball file to ${INSTALL_RKE2_TAR_PREFIX}"
    mkdir -p "${INSTALL_RKE2_TAR_PREFIX}"
    (cd "${TMP_DIR}/rke2-tarball" && tar cf - .) | tar xf - -C "${INSTALL_RKE2_TAR_PREFIX}" --no-same-owner
}

setup_service() {
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        return 0
    fi
    info "systemd is not running: installing SysV init scripts /etc/init.d/rke2-server and /etc/init.d/rke2-agent"
    mkdir -p /etc/init.d
    for type in server agent; do
        install -m 0755 "${INSTALL_RKE2_TAR_PREFIX}/share/rke2/init.d/rke2-${type}" "/etc/init.d/rke2-${type}"
    done
}

do_install() {
    setup_env
    check_method_conflict
    setup_arch
    setup_tmp
    if [ -n "${INSTALL_RKE2_ARTIFACT_PATH}" ]; then
        stage_local_checksums
        stage_local_airgap_images
        stage_local_tarball
    else
        find_downloader
        [ -n "${INSTALL_RKE2_VERSION}" ] || \
            fatal "INSTALL_RKE2_VERSION is required: the stand-in does not look up release channels"
        info "using ${INSTALL_RKE2_VERSION} as release"
        download_checksums
        download_tarball
    fi
    verify_tarball
    verify_version
    unpack_tarball
    setup_service
}

do_install
exit 0
