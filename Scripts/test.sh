#!/usr/bin/env bash
# Sets up the machine and runs the whole test suite: unit tests, and integration tests that
# really mount FUSE, really run KVM sandboxes and really start a registry. Needs root,
# /dev/kvm and /dev/fuse; tests that lack them fail loudly.
set -euo pipefail
[[ $(id -u) -eq 0 ]] || { command -v sudo >/dev/null && exec sudo -E "$0" "$@"; echo "$0: run as root" >&2; exit 1; }
cd "$(dirname "$0")/.."
Scripts/bootstrap.sh --deps-only
command -v swift >/dev/null || export PATH="/opt/swift/usr/bin:$PATH"
for device in /dev/kvm /dev/fuse; do
  [[ -e $device ]] || echo "test: WARNING: $device is missing; the tests that need it will fail" >&2
done
swift build --build-tests
exec swift test --skip-build "$@"
