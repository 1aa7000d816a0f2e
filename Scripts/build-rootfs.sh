#!/usr/bin/env bash
# Builds a minimal function runtime rootfs from the host's interpreter:
#
#   Scripts/build-rootfs.sh [--runtime python3.11|nodejs] OUTDIR
#
# python3.11 (the default), from the host's Debian python3.11: OUTDIR gets the interpreter, ld.so
# and every library `ldd` lists for it and for the standard library's extension modules, the
# standard library without its tests (precompiled, since the sandbox's rootfs is read-only and
# python could not write __pycache__ there), the reference runner /opt/catalyzer/runner.py and the
# sample functions /functions/{hello,heavy}.py.
#
# nodejs, from the host's node (Debian's nodejs, or any build of it at /usr/bin/node): the node
# binary, ld.so and its libraries, the runner /opt/catalyzer/runner.js and its addon
# /opt/catalyzer/reseed.node, compiled here with gcc (it reseeds OpenSSL in each restored instance;
# see runner.js).
#
# Both get libgcc_s.so.1 (no ELF file lists it, but glibc dlopens it to unwind a thread in
# pthread_exit and thread cancellation, so a threaded program aborts without it) and an /etc
# with passwd, group, hosts (localhost, IPv4 and IPv6), host.conf (multi on, as Debian ships it:
# getaddrinfo returns every address a name has there) and nsswitch.conf (files first, so
# localhost needs no DNS).
# Libraries are real files at the paths ld.so searches by default; no ld.so.cache is needed.
# The rootfs is built next to OUTDIR and renamed into place, so OUTDIR is never half-built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
usage="usage: build-rootfs.sh [--runtime python3.11|nodejs] OUTDIR"
runtime=python3.11
if [[ ${1:-} == --runtime ]]; then runtime=${2:?$usage}; shift 2; fi
out=${1:?$usage}
python=/usr/bin/python3.11
version=3.11
node=/usr/bin/node
case $runtime in
  python3.11) [[ -x $python ]] || { echo "build-rootfs: $python is missing (apt-get install python3.11)" >&2; exit 1; } ;;
  nodejs)
    [[ -x $node ]] || { echo "build-rootfs: $node is missing (apt-get install nodejs)" >&2; exit 1; }
    command -v gcc >/dev/null || { echo "build-rootfs: gcc is missing (apt-get install gcc), needed for reseed.node" >&2; exit 1; } ;;
  *) echo "build-rootfs: unknown runtime '$runtime'; $usage" >&2; exit 2 ;;
esac

out=$(realpath -m "$out")
stage="$out.building.$$"
trap 'rm -rf "$stage"' EXIT
rm -rf "$stage"
# dev/shm: an empty mount point, so a host reference run that mounts a tmpfs there (as the tests
# do) never adds it later, which would change / under images checkpointed against the rootfs.
mkdir -p "$stage"/{usr/bin,lib/x86_64-linux-gnu,lib64,tmp,opt/catalyzer,functions,etc,dev/shm}

# copy_libraries FILE...: the shared libraries each ELF file needs, at their canonical paths.
copy_libraries() {
  ldd "$@" 2>/dev/null | awk '/=> \// { print $3 } /^\t\/lib64\// { print $1 }' | sort -u |
  while read -r lib; do
    case "$lib" in
      */ld-linux-x86-64.so.2) cp -L "$lib" "$stage/lib64/ld-linux-x86-64.so.2" ;;
      *) cp -L "$lib" "$stage/lib/x86_64-linux-gnu/$(basename "$lib")" ;;
    esac
  done
}

build_python() {
  cp -L "$python" "$stage/usr/bin/python$version"
  ln -s "python$version" "$stage/usr/bin/python3"
  copy_libraries "$python"

  stdlib=/usr/lib/python$version
  (cd "$stdlib" && find . \
      \( -name __pycache__ -o -name test -o -name tests -o -name idle_test \
         -o -path ./idlelib -o -path ./tkinter -o -path ./turtledemo -o -path ./ensurepip \
         -o -path ./lib2to3 -o -path ./pydoc_data -o -path './config-*' \
         -o -path ./site-packages -o -path ./dist-packages \) -prune \
      -o \( -type f -o -type l \) -print0 |
    grep -zv -E 'lib-dynload/(_test|_xxtest|xxlimited|_ctypes_test)' |
    cpio --null -pdm --quiet "$stage$stdlib")
  copy_libraries "$stage$stdlib"/lib-dynload/*.so
  cp "$here/rootfs/opt/catalyzer/runner.py" "$stage/opt/catalyzer/"
  cp "$here/rootfs/functions/"*.py "$stage/functions/"
}

build_nodejs() {
  cp -L "$node" "$stage/usr/bin/node"
  copy_libraries "$node"
  cp "$here/rootfs/opt/catalyzer/runner.js" "$stage/opt/catalyzer/"
  gcc -O2 -shared -fPIC -Wall -Werror -o "$stage/opt/catalyzer/reseed.node" "$here/rootfs/opt/catalyzer/reseed.c"
  mkdir -p "$stage/var/task"
}

case $runtime in
  python3.11) build_python ;;
  nodejs) build_nodejs ;;
esac

# glibc loads libgcc_s.so.1 at run time (dlopen, for unwinding in pthread_exit and cancellation).
# awk reads to the end: stopping at the first match let ldconfig die of SIGPIPE now and then,
# which pipefail made the script's exit status (141).
libgcc_s=$(ldconfig -p | awk '$1 == "libgcc_s.so.1" && /x86-64/ && found == "" { found = $NF } END { print found }')
[[ -n $libgcc_s && -f $libgcc_s ]] || { echo "build-rootfs: libgcc_s.so.1 is missing (apt-get install libgcc-s1)" >&2; exit 1; }
cp -L "$libgcc_s" "$stage/lib/x86_64-linux-gnu/libgcc_s.so.1"

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$stage/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/etc/group"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$stage/etc/hosts"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$stage/etc/nsswitch.conf"
printf 'multi on\n' >"$stage/etc/host.conf"

# Bytecode for everything, compiled by the same interpreter, paths as seen inside the rootfs.
if [[ $runtime == python3.11 ]]; then
  "$python" -m compileall -q -j 0 -s "$stage" -p / "$stage$stdlib" "$stage/opt/catalyzer" "$stage/functions" >/dev/null
fi

rm -rf "$out"
mv "$stage" "$out"
trap - EXIT
echo "build-rootfs: $out ($(du -sh "$out" | cut -f1))"
