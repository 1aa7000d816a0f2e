#!/usr/bin/env bash
# Builds the rootfs CPython's own regression tests run in, for comparing the sandbox with the host
# (Scripts/cpython-compat.py):
#
#   Scripts/build-test-rootfs.sh OUTDIR
#
# OUTDIR gets the function rootfs (Scripts/build-rootfs.sh), plus:
#   - /usr/lib/python3.11/test from Debian's libpython3.11-testsuite, and the test extension
#     modules (_testcapi, _testinternalcapi, ...) that the function rootfs leaves out;
#   - numpy from PyPI (a cp311 manylinux wheel, $NUMPY_VERSION, default below) in
#     /usr/local/lib/python3.11/dist-packages, where Debian's python looks for pip-installed
#     packages, with its bundled OpenBLAS (numpy.libs) and the system libraries its extension
#     modules need (libstdc++);
#   - requests from PyPI ($REQUESTS_VERSION, default below) with its dependencies (urllib3, idna,
#     charset-normalizer, certifi), wheels only, for the network tests;
#   - empty mount points /dev/{null,zero,random,urandom}, /dev/shm and /proc, so the host
#     reference run can bind the host's devices there (the sandbox serves those devices itself).
# Everything is precompiled like the function rootfs (the sandbox's rootfs is read-only). Like
# build-rootfs.sh, it is built next to OUTDIR and renamed into place; rerunning rebuilds it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build-test-rootfs.sh OUTDIR}
python=/usr/bin/python3.11
version=3.11
numpy_version=${NUMPY_VERSION:-2.4.6}
requests_version=${REQUESTS_VERSION:-2.34.2}
tests=/usr/lib/python$version/test
dynload=/usr/lib/python$version/lib-dynload
site=/usr/local/lib/python$version/dist-packages

die() { echo "build-test-rootfs: $*" >&2; exit 1; }
[[ -f $tests/test_threading.py ]] || die "$tests is incomplete (apt-get install libpython$version-testsuite)"
"$python" -m pip --version >/dev/null 2>&1 || die "pip is missing for $python (apt-get install python3-pip)"

out=$(realpath -m "$out")
stage="$out.building.$$"
trap 'rm -rf "$stage"' EXIT
rm -rf "$stage"
"$here/build-rootfs.sh" "$stage" >/dev/null

# The regression tests, without the host's bytecode (compiled again below, with rootfs paths).
mkdir -p "$stage$tests"
(cd "$tests" && find . -name __pycache__ -prune -o \( -type f -o -type l \) -print0 |
  cpio --null -pdm --quiet "$stage$tests")
cp -L "$dynload"/_test*.so "$dynload"/_xxtest*.so "$dynload"/xxlimited*.so "$dynload"/_ctypes_test*.so \
  "$stage$dynload/"

# numpy and requests, from wheels only (never built from source here). pip's notes about the
# host's own packages (it checks them too) say nothing about the target and are dropped.
PIP_DISABLE_PIP_VERSION_CHECK=1 "$python" -m pip install --quiet --root-user-action=ignore --no-compile --only-binary=:all: \
  --target "$stage$site" "numpy==$numpy_version" "requests==$requests_version" 2> >(grep -v ' requires .*, but you have ' >&2)
rm -rf "$stage$site/bin"
[[ -d $stage$site/numpy.libs ]] || die "the numpy wheel brought no numpy.libs (bundled OpenBLAS)"

# System libraries the new extension modules need (numpy's own come from numpy.libs via RPATH).
find "$stage$dynload" "$stage$site" -name '*.so*' -type f -print0 | xargs -0 ldd 2>/dev/null |
  awk '/=> \// { print $3 }' | sort -u |
  while read -r lib; do
    case "$lib" in
      "$stage"/*) ;;
      */ld-linux-x86-64.so.2) ;;
      *) [[ -e $stage/lib/x86_64-linux-gnu/$(basename "$lib") ]] ||
           cp -L "$lib" "$stage/lib/x86_64-linux-gnu/$(basename "$lib")" ;;
    esac
  done

mkdir -p "$stage/dev/shm" "$stage/proc"
touch "$stage/dev/null" "$stage/dev/zero" "$stage/dev/random" "$stage/dev/urandom"

# Bytecode, paths as seen inside the rootfs. Some test files are deliberately not valid Python
# (bad_coding*, badsyntax_*): skip those, as CPython's own install does.
"$python" -m compileall -q -j 0 -s "$stage" -p / -x 'bad_coding|badsyntax|tokenizedata/bad' \
  "$stage$tests" "$stage$site" >/dev/null ||
  die "compileall failed on the tests or site packages"

chroot "$stage" /usr/bin/python3 -c 'import numpy, requests, test.support, _testcapi' ||
  die "the staged rootfs cannot import numpy, requests, test.support and _testcapi"

rm -rf "$out"
mv "$stage" "$out"
trap - EXIT
echo "build-test-rootfs: $out ($(du -sh "$out" | cut -f1))"
