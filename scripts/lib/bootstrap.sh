# Shared by scripts/run and scripts/test: install what the portal needs on a Debian machine.

# The embedded default needs no server: only Python's venv module and the ssh client that Ansible uses.
APT_PACKAGES_RUN="python3-venv openssh-client"
APT_PACKAGES_TEST="python3-venv redis-server postgresql openssh-server openssh-client sudo iproute2 etcd-server etcd-client kubectl chromium chromium-driver systemd-container debootstrap attr nftables"

# bootstrap_system_packages [PACKAGES]: install the missing ones (default: everything the test suite needs).
bootstrap_system_packages() {
  local wanted=${1:-$APT_PACKAGES_TEST} missing=()
  for pkg in $wanted; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "Missing Debian packages: ${missing[*]} (run as root, or install them first)" >&2
      return 1
    fi
    echo "Installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# bootstrap_venv [REQUIREMENTS]: create .venv and install REQUIREMENTS (default requirements.txt, the runtime
# packages; the test command passes requirements-dev.txt) whenever a requirements file changed.
bootstrap_venv() {
  local requirements=${1:-requirements.txt}
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  local stamp=.venv/.requirements.sha256
  local want
  want=$(cat "$requirements" requirements*.txt | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing Python packages from $requirements"
    .venv/bin/pip install -q --disable-pip-version-check -r "$requirements" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
    .venv/bin/python -c "import django, ansible_runner, celery" || { echo "pip install failed" >&2; return 1; }
    echo "$want" > "$stamp"
  fi
}
