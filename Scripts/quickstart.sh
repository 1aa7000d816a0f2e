#!/usr/bin/env bash
# Sets everything up and runs the main job, printing a table of timings.
#
# Today the main job exercises the image store and catalyzerfs end to end: it dumps the memory
# of a live, initialized python3 process (what a checkpoint captures), creates a compressed,
# content-addressed image from it, inspects, verifies and exports it, then mounts the store with
# mount -t catalyzerfs and reads the memory back through FUSE, cold and cached; finally it builds
# the Python function rootfs and serves a request from each sample function in a KVM sandbox,
# checkpoints both, restores them, and serves them over the Lambda API with `catalyzer serve`.
set -euo pipefail
[[ $(id -u) -eq 0 ]] || { command -v sudo >/dev/null && exec sudo -E "$0" "$@"; echo "$0: run as root" >&2; exit 1; }
cd "$(dirname "$0")/.."
Scripts/bootstrap.sh
export PATH="/usr/local/bin:$PATH"

store=${CATALYZER_STORE:-/var/lib/catalyzer}
work=$(mktemp -d /tmp/catalyzer-quickstart.XXXXXX)
# The managed catalyzerfs mount of the restore steps lives under $CATALYZER_RUN_DIR, private to this run.
export CATALYZER_RUN_DIR="$work/run"

# Leaves nothing behind, whichever step failed: mounts, the function images (they refer to the
# rootfs in $work), $work. Errors are ignored here: `set -e` would end the cleanup at the first.
cleanup() {
  set +e
  [[ -n "${serve_pid:-}" ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  catalyzer mount --store "$store" --unmount >/dev/null 2>&1
  catalyzer image rm --store "$store" quickstart-hello quickstart-heavy >/dev/null 2>&1
  mountpoint -q "$work/mnt" && umount "$work/mnt"
  rm -rf "$work"
}
trap cleanup EXIT
declare -a rows=()

# step NAME COMMAND...: runs a step, records its wall time in ms.
step() {
  local name=$1; shift
  local start end
  start=$(date +%s%N)
  "$@"
  end=$(date +%s%N)
  rows+=("$name|$(( (end - start) / 1000000 ))")
}

dump_python() {
  /usr/bin/python3 - "$work/python.mem" <<'PY'
import json, re, decimal, datetime, email.parser, urllib.parse, hashlib, sqlite3, sys
out = open(sys.argv[1], "wb")
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
    for line in maps:
        fields = line.split()
        if not fields[1].startswith("r") or fields[-1] in ("[vvar]", "[vsyscall]"):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        try:
            mem.seek(start); out.write(mem.read(end - start))
        except OSError:
            pass
PY
}

echo
echo "== image store demo (store: $store)"
step "dump python3 memory"     dump_python
step "image create (zstd)"     catalyzer image create --store "$store" --from "$work/python.mem" --name quickstart-python
step "image inspect"           catalyzer image inspect --store "$store" quickstart-python
step "image verify"            catalyzer image verify --store "$store" quickstart-python
step "image export"            catalyzer image export --store "$store" quickstart-python "$work/export.mem"
step "compare export"          cmp "$work/python.mem" "$work/export.mem"
echo "export is byte-identical to the dump ($(stat -c %s "$work/python.mem") bytes)"

echo
echo "== catalyzerfs: the image's memory, served on first read (mount: $work/mnt)"
mkdir -p "$work/mnt"
step "mount -t catalyzerfs"    mount -t catalyzerfs "$store" "$work/mnt" -o ro,cache_size=64M
step "first read (cold)"       cmp "$work/python.mem" "$work/mnt/quickstart-python/memory"
step "second read (cached)"    cmp "$work/python.mem" "$work/mnt/quickstart-python/memory"
echo "memory read through catalyzerfs is byte-identical to the dump"
python3 -c 'import json, sys; s = json.load(open(sys.argv[1]))["images"]["quickstart-python"]; print("stats:", {k: s[k] for k in ("readsServed", "bytesReturned", "blobsFetched", "bytesFetched")})' "$work/mnt/.stats" || cat "$work/mnt/.stats"
step "umount"                  umount "$work/mnt"

echo
echo "== a Python function in a KVM sandbox (cold start: interpreter start, imports, one request)"
step "build guest rootfs"      Scripts/build-rootfs.sh "$work/rootfs"
invoke() {
  echo "{\"name\": \"quickstart\", \"customer\": \"customer-42\"}" |
    catalyzer run --rootfs "$work/rootfs" --memory 256M --timeout 30s -- \
      /usr/bin/python3 /opt/catalyzer/runner.py "/functions/$1.py" | cut -c1-150
}
step "sandbox: hello (cold)"   invoke hello
step "sandbox: heavy (cold)"   invoke heavy

echo
echo "== checkpoint at the ready point, then restore: memory served on first touch by catalyzerfs"
request='{"name": "quickstart", "customer": "customer-42"}'
checkpoint() {
  catalyzer checkpoint --store "$store" --rootfs "$work/rootfs" --name "quickstart-$1" --memory 256M \
    --record-working-set --working-set-input "$request" -- /usr/bin/python3 /opt/catalyzer/runner.py "/functions/$1.py"
}
restore() {
  catalyzer invoke --store "$store" "quickstart-$1" --input "$request" --timings | cut -c1-150
}
step "checkpoint hello"        checkpoint hello
step "checkpoint heavy"        checkpoint heavy
step "invoke hello (restore)"  restore hello
step "invoke heavy (restore)"  restore heavy
step "invoke heavy (again)"    restore heavy
echo "(an invoke row is the whole command: CLI start-up, restore, response, and the function's exit at the end of its input; the phases above, from --timings, end at the response)"

echo
echo "== catalyzer serve: the Lambda invoke API, every invocation a fork (sfork) of a parked template"
catalyzer serve --store "$store" --listen 127.0.0.1:0 2>"$work/serve.log" &
serve_pid=$!
port=""
for _ in $(seq 100); do
  port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/serve.log")
  [[ -n "$port" ]] && break
  sleep 0.1
done
[[ -n "$port" ]] || { cat "$work/serve.log" >&2; echo "quickstart: catalyzer serve did not start" >&2; exit 1; }
# A keep-alive client: the first invocation of a function parks its template; the rest are forks.
lambda_invoke() {
  python3 - "$port" "quickstart-$1" "$request" <<'PY'
import http.client, statistics, sys, time
port, function, event = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
connection = http.client.HTTPConnection("127.0.0.1", port)
def invoke():
    connection.request("POST", f"/2015-03-31/functions/{function}/invocations", body=event)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200 or response.getheader("X-Amz-Function-Error"):
        sys.exit(f"invoke {function}: {response.status} {body[:300]!r}")
    return body
started = time.perf_counter(); body = invoke(); first = (time.perf_counter() - started) * 1000
times = []
for _ in range(50):
    started = time.perf_counter(); invoke(); times.append((time.perf_counter() - started) * 1000)
times.sort()
print(f"{function}: {body.decode()[:100]}")
print(f"  first invocation (template restored) {first:.1f} ms; next 50 over HTTP: median {statistics.median(times):.2f} ms, max {times[-1]:.2f} ms")
PY
}
step "serve: 51 x hello"       lambda_invoke hello
step "serve: 51 x heavy"       lambda_invoke heavy
kill -TERM "$serve_pid"; wait "$serve_pid"; serve_pid=""

echo
printf '%-26s %10s\n' "phase" "ms"
printf '%-26s %10s\n' "--------------------------" "----------"
for row in "${rows[@]}"; do
  printf '%-26s %10s\n' "${row%%|*}" "${row##*|}"
done
