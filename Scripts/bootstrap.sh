#!/usr/bin/env bash
# Sets up a Debian machine for Catalyzer: installs every Debian package the project needs
# (idempotent; quiet unless something fails), then builds and installs the release binaries
# and the mount helper.
#
#   Scripts/bootstrap.sh             packages + release build + install
#   Scripts/bootstrap.sh --deps-only packages + mount helper only (the test suite builds its own)
set -euo pipefail
cd "$(dirname "$0")/.."

deps_only=false
[[ "${1:-}" == "--deps-only" ]] && deps_only=true

say() { printf '\033[1mbootstrap:\033[0m %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || { command -v sudo >/dev/null && exec sudo -E "$0" "$@"; echo "$0: run as root" >&2; exit 1; }

# Debian packages: build (C libraries for the shims), run (fuse3 for mount/umount),
# test (busybox-static, gcc, fio, python3 for dumps and the guest rootfs, docker-registry, skopeo,
# apache2-utils (htpasswd -B, bcrypt) and openssl for the registry tests' auth and TLS, zstd (GNU tar
# reading rootfs layers),
# python3-pip and libpython3.11-testsuite for the test rootfs: numpy and CPython's own regression
# tests, for the sandbox-vs-host comparison),
# benchmark baselines (runsc: gVisor),
# python3-boto3 and awscli: the real Lambda clients the `catalyzer serve` tests drive,
# dnsmasq-base: the stub DNS resolver the network tests start on loopback,
# nodejs: the Node.js function runtime (build-rootfs.sh --runtime nodejs copies its node),
# podman (with conmon and runc) and containerd (with its runc v2 shim): the engines the OCI runtime
# tests drive catalyzer-runtime from; criu, which podman requires before it will checkpoint (its
# images are not used: catalyzer-runtime writes Catalyzer images);
# python3-matplotlib: Scripts/plot-startup.py draws docs/startup.png from `bench startup --json`.
packages=(
  pkg-config gcc libc6-dev
  libfuse3-dev fuse3 libzstd-dev liblz4-dev
  python3 python3.11 python3-pip libpython3.11-testsuite cpio busybox-static fio docker-registry skopeo runsc
  iproute2 apache2-utils openssl zstd
  python3-boto3 awscli dnsmasq-base nodejs podman runc containerd criu python3-matplotlib
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    die "apt-get failed installing: ${missing[*]}"
  fi
  rm -f "$log"
fi

# The Swift toolchain is not a Debian package; it is expected on PATH or in /opt/swift.
if ! command -v swift >/dev/null && [[ -x /opt/swift/usr/bin/swift ]]; then
  export PATH="/opt/swift/usr/bin:$PATH"
fi
command -v swift >/dev/null || die "no Swift toolchain: install Swift 6.x and put it on PATH"

# mount(8) looks for helpers in /sbin.
if [[ -f mount-helpers/mount.catalyzerfs ]]; then
  install -m 0755 mount-helpers/mount.catalyzerfs /sbin/mount.catalyzerfs
fi

$deps_only && exit 0

say "building release binaries (swift build -c release)"
log=$(mktemp)
swift build -c release >"$log" 2>&1 || { cat "$log" >&2; die "release build failed"; }
rm -f "$log"
bin=$(swift build -c release --show-bin-path)
for tool in catalyzer catalyzerfs catalyzer-runtime; do
  if [[ -x "$bin/$tool" ]]; then
    install -m 0755 "$bin/$tool" /usr/local/bin/
    say "installed /usr/local/bin/$tool"
  fi
done
