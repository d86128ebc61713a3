#!/usr/bin/env bash
# Install everything the local target needs, idempotently: Debian packages, the podman
# engine settings this host needs, and the project's virtual environment.
# A second run changes nothing and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

# fdisk (sfdisk): verify --target aws reads a read-back disk's partition table; qemu-system-x86, ovmf, qemu-utils: verify --vm; e2fsprogs, dosfstools, mtools (and systemd-repart, in systemd): bake.py disk;
# openssh-client: the verify VM's break-glass SSH; nftables, iproute2: the IMDS tests' network namespaces
PACKAGES=(fdisk podman runc mmdebstrap haproxy packer podman-docker socat git python3-venv uidmap qemu-system-x86 qemu-utils ovmf e2fsprogs dosfstools mtools openssh-client nftables iproute2)
CONTAINERS_CONF=/etc/containers/containers.conf
VENV=.venv
PYTHON=${PYTHON:-python3}

say() { echo "setup: $*"; }

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]}; run make setup as root" >&2
    exit 2
  fi
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# podman on these hosts: crun refuses the hybrid cgroup layout, and the default ulimits are refused.
read -r -d '' WANT_CONF <<'CONF' || true
# Written by bakery's scripts/setup.sh: podman on this host needs runc and explicit ulimits.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
CONF
if [[ ! -f $CONTAINERS_CONF ]] || [[ "$(cat "$CONTAINERS_CONF")" != "$WANT_CONF" ]]; then
  if [[ -f $CONTAINERS_CONF ]] && ! grep -q "bakery's scripts/setup.sh" "$CONTAINERS_CONF"; then
    cp "$CONTAINERS_CONF" "$CONTAINERS_CONF.before-bakery"
    say "kept the previous $CONTAINERS_CONF as $CONTAINERS_CONF.before-bakery"
  fi
  mkdir -p "$(dirname "$CONTAINERS_CONF")"
  printf '%s\n' "$WANT_CONF" > "$CONTAINERS_CONF"
  say "wrote $CONTAINERS_CONF"
fi

if [[ ! -x $VENV/bin/python ]]; then
  say "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
want=$(sha256sum requirements.txt | cut -d' ' -f1)
have=$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)
if [[ $want != "$have" ]]; then
  say "installing Python packages from requirements.txt"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
  "$VENV/bin/python" -m pip install -q -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$VENV/.requirements.sha256"
fi

if ! podman info >/dev/null 2>&1; then
  echo "setup: podman is installed but 'podman info' fails; see: podman info" >&2
  exit 1
fi
say "ready"
