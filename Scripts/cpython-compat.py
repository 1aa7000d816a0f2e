#!/usr/bin/env python3
"""Runs CPython's own regression tests in the sandbox and on the host, and compares them test by test.

    cpython-compat.py --rootfs R --catalyzer PATH [--timeout S] [--memory M] [--runner regrtest,unittest]
                      [--markdown FILE] [--json FILE] [--logs DIR]
                      [--require-same MOD...] [--require-ratio RATIO MOD...] MODULE...
    cpython-compat.py --parse LOG     the outcomes it reads from a saved verbose output, as JSON
    cpython-compat.py --render JSON MARKDOWN    the markdown report again from a run's --json

R is a test rootfs (Scripts/build-test-rootfs.sh). For every module (`test_json`,
`test_asyncio.test_events`, ...) and runner it runs, one after the other:

  sandbox: catalyzer run --rootfs R --memory M --timeout S --strace -- /usr/bin/python3 RUNNER MODULE
  host:    chroot R /usr/bin/python3 RUNNER MODULE, as root, in a private mount and PID namespace
           where R is read-only, /tmp and /dev/shm are fresh tmpfs, /proc is the namespace's own,
           and /dev/{null,zero,random,urandom} are the host's (the devices the sandbox serves)

Both get the same environment (PATH, TMPDIR=/tmp, PYTHONUNBUFFERED=1) and start in /. Both
runners first make the program's fd 2 a copy of fd 1, so its output arrives in order on one pipe
and the sandbox's syscall trace stays apart from it:

  regrtest  `python3 -m test -v MODULE` (run as python3 -c BOOT -v MODULE): CPython's test driver;
            it works in a fresh directory under $TMPDIR, the only writable place in the sandbox
  unittest  `python3 -m unittest -v test.MODULE` (run as python3 -c BOOT test.MODULE) from a fresh
            directory under /tmp, no test resources enabled (as regrtest without -u). Unlike
            regrtest it does not enable faulthandler, so it runs where faulthandler cannot. It
            stats a marker path before each test, so the trace tells which test made each call.

unittest's verbose lines (`name (module.Class.name) ... ok|FAIL|ERROR|skipped '...'|expected
failure|unexpected success`, also when other output lands between the name and the result, and
failing subtests) give each test's outcome; the failure reports give its cause (the exception line
of the traceback, plus the syscalls that gave ENOSYS during the test). A run that times out or dies
marks the test it was in as "timed out" or "crashed: <exit status>" and every test it did not
reach as not run, for the same cause.

Exit status: 0 when the comparison ran, 1 when a --require-same / --require-ratio module missed
its bar (same outcome as the host for every test / at least RATIO of the tests that pass on the
host also pass in the sandbox), 2 on a usage or setup error.
"""

import argparse
import collections
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENVIRONMENT = {"PATH": GUEST_PATH, "TMPDIR": "/tmp", "PYTHONUNBUFFERED": "1"}
PYTHON = "/usr/bin/python3"
HOST_DEVICES = ("null", "zero", "random", "urandom")

# The unittest runner: what `cd $(mktemp -d) && python3 -m unittest -v test.MODULE` would do, with
# test resources (network, cpu, ...) disabled the way regrtest disables them without -u.
# Both runners start with fd 2 made a copy of fd 1, so the program's stdout and stderr arrive in
# order on one pipe and the monitor's stderr carries only its syscall trace and messages.
REGRTEST_BOOT = """\
import os, runpy
os.dup2(1, 2)
runpy.run_module('test', run_name='__main__', alter_sys=True)
"""

# The result stream is stdout, as regrtest's is. Before each test it stats a path naming the test
# (which does not exist), so the sandbox's syscall trace shows which test made each call. Right
# after a failure or error it prints a CAUSE line, because unittest prints its failure reports
# only at the end, which a run that hangs or dies never reaches.
MARKER = "/.catalyzer-compat/"
CAUSE = "@@compat-cause "
UNITTEST_BOOT = """\
import os, sys, tempfile, unittest
os.dup2(1, 2)
from test import support
support.use_resources = []

class Result(unittest.TextTestResult):
    def startTest(self, test):
        try:
            os.stat(%r + test.id())
        except OSError:
            pass
        super().startTest(test)

    def cause(self, test, err):
        kind, value = err[0], err[1]
        name = kind.__qualname__
        if kind.__module__ not in ("builtins", "__main__"):
            name = kind.__module__ + "." + name
        try:
            lines = str(value).splitlines()
        except Exception:
            lines = []
        self.stream.write("\\n%%s%%s: %%s\\n" %% (%r, test.id(), name + (": " + lines[0] if lines else "")))
        self.stream.flush()

    def addError(self, test, err):
        super().addError(test, err)
        self.cause(test, err)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.cause(test, err)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.cause(test, err)

class Runner(unittest.TextTestRunner):
    resultclass = Result
    def __init__(self, **options):
        super().__init__(stream=sys.stdout, **options)

os.chdir(tempfile.mkdtemp(prefix='test_python_'))
unittest.main(module=None, argv=['python3 -m unittest', '-v', sys.argv[1]], testRunner=Runner)
""" % (MARKER, CAUSE)

# Mounts the host reference run's view of the rootfs, then chroots; runs as PID 1 of a new PID
# namespace inside a new mount namespace, so every mount and process goes away with it.
# unshare copies the host's mounts, catalyzerfs mounts of concurrent tests included. Mounts are
# private here, so a copy outlives the test's own umount and keeps its daemon alive for as long as
# this run lasts; the first line drops those copies.
HOST_SETUP = r"""
umount -a -l -t fuse.catalyzerfs 2>/dev/null || true
set -e
root=$1 tmpsize=$2; shift 2
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o "size=$tmpsize,mode=1777" tmpfs "$root/tmp"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
mount -t proc proc "$root/proc"
ip link set lo up
for device in """ + " ".join(HOST_DEVICES) + r"""; do mount --bind "/dev/$device" "$root/dev/$device"; done
exec chroot "$root" "$@"
"""

PASSED = ("ok", "expected failure")
STATUS_WORDS = r"ok|FAIL|ERROR|skipped(?: .*)?|expected failure|unexpected success"
# `name (dotted.id)` plus what follows: a subtest's `[msg] (params)`, ` ... STATUS`, or nothing. A
# duration the previous test printed without a newline may come first.
START_RE = re.compile(r"^(?:\d+\.\d+s )?(?P<indent>\s*)(?P<name>[^\s()\[\]]+) \((?P<id>[\w.]*)\)(?P<rest>.*)$")
# The status ends the line; a test's own output may come before it (test_concurrent_futures
# prints each test's duration: "... 0.10s ok").
STATUS_AFTER_DOTS_RE = re.compile(r" \.\.\. (?:.*? )?(?P<status>" + STATUS_WORDS + r")$")
STATUS_LINE_RE = re.compile(r"^(?:\d+\.\d+s )?(?P<status>" + STATUS_WORDS + r")$")
CAUSE_RE = re.compile(r"^" + re.escape(CAUSE) + r"(?P<test>[\w.]+): (?P<cause>.*)$")
REPORT_HEADER_RE = re.compile(r"^(?P<kind>ERROR|FAIL|UNEXPECTED SUCCESS): (?P<desc>.*)$")
STRACE_RE = re.compile(r"^(?:\[pid \d+\] )?(?P<name>\w+)\(.*\) = (?P<result>.*)$")  # a child's lines: [pid N]
# ENOSYS results that explain no failure: glibc probes rseq in every new process and carries on.
IGNORED_ENOSYS = {"rseq"}
MARKER_RE = re.compile(r'"' + re.escape(MARKER) + r'(?P<test>[\w.]+)"')
SEPARATOR_EQ = "=" * 70
SEPARATOR_DASH = "-" * 70


# ---------------------------------------------------------------------------------------------
# Parsing unittest's verbose output


def test_key(name, paren):
    """The test's id: unittest 3.11 prints `name (module.Class.name)`; doctests and class or
    module fixtures print `name (module.Class)` or `name ()`."""
    if paren == name or paren.endswith("." + name):
        return paren
    return paren + "." + name if paren else name


def normalize_status(raw):
    if raw.startswith("skipped"):
        return "skipped"
    return raw


def severity(status):
    return {"ERROR": 5, "FAIL": 4, "unexpected success": 3, "ok": 1, "expected failure": 1, "skipped": 0}.get(status, 2)


def exception_line(text):
    """The exception line of the last traceback in `text` (its first line), or ''."""
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines):
        if line.rstrip().endswith("Traceback (most recent call last):"):  # regrtest: "test X crashed -- Traceback"
            start = i
    if start is None:
        return next((l.strip() for l in lines if l.strip()), "")
    for line in lines[start + 1:]:
        if line and not line[0].isspace():
            return line.strip()
    return ""


VOLATILE = [
    (re.compile(r"/tmp/test_python_[\w-]+"), "/tmp/test_python_*"),   # regrtest's or the runner's cwd
    (re.compile(r"\btmp[a-z0-9_]{8}\b"), "tmp*"),                    # tempfile.mkdtemp/mkstemp names
    (re.compile(r"@test_\d+_tmp"), "@test_PID_tmp"),                  # test.support.os_helper.TESTFN
    (re.compile(r"\b0x[0-9a-f]{6,}\b"), "0x..."),                      # addresses in reprs
]


OSERROR_RE = re.compile(r"^(?P<type>[\w.]+): (?P<errno>\[Errno \d+\] [^:'\"\]]+?)(?::? '.*)?$")
ERRNO_RE = re.compile(r"\[Errno \d+\] [^:'\"\]]+")


def stable_cause(text):
    """A cause with run-specific names (temp paths, pids, addresses) replaced, so equal causes group.
    An OSError keeps its errno and message, not its file names; shutil.Error its first errno."""
    match = OSERROR_RE.match(text)
    if match:
        return match.group("type") + ": " + match.group("errno").rstrip()
    if text.startswith("shutil.Error: [("):
        errno = ERRNO_RE.search(text)
        if errno:
            return "shutil.Error: copying failed with " + errno.group(0).rstrip()
    for pattern, replacement in VOLATILE:
        text = pattern.sub(replacement, text)
    return text


def parse_output(text):
    """Outcomes of every test in a verbose unittest output:
    {key: {"status": ..., "detail": skip reason or cause}} in the order they ran, plus the key of
    a test that started and never reported (the run ended inside it)."""
    results = collections.OrderedDict()
    pending = None  # key of a test that printed its name but no status yet

    def record(key, raw, subtest):
        status = normalize_status(raw)
        detail = raw[len("skipped"):].strip().strip("'\"") if raw.startswith("skipped") else ""
        if subtest and status not in ("FAIL", "ERROR"):
            return  # passing or skipped subtests do not decide the test's outcome
        old = results.get(key)
        if old is None or severity(status) > severity(old["status"]):
            results[key] = {"status": status, "detail": detail or (old or {}).get("detail", "")}

    lines = text.splitlines()
    early_causes = {}  # the unittest runner's CAUSE lines
    for index, line in enumerate(lines):
        if line == SEPARATOR_EQ and index + 1 < len(lines) and REPORT_HEADER_RE.match(lines[index + 1]):
            break  # the failure reports follow; outcomes are all printed before them
        cause = CAUSE_RE.match(line)
        if cause:
            early_causes.setdefault(cause.group("test"), stable_cause(cause.group("cause")))
            continue
        match = START_RE.match(line)
        if match:
            rest = match.group("rest")
            subtest = bool(match.group("indent")) or rest.startswith((" (", " ["))
            if rest == "" or rest.startswith(" ... ") or rest == " ..." or subtest:
                key = test_key(match.group("name"), match.group("id"))
                status = STATUS_AFTER_DOTS_RE.search(rest)
                if status:
                    record(key, status.group("status"), subtest)
                    if not subtest or pending == key:
                        pending = None
                else:
                    pending = key
                continue
        if pending:
            status = STATUS_AFTER_DOTS_RE.search(line) or STATUS_LINE_RE.match(line)
            if status:
                record(pending, status.group("status"), False)
                pending = None
    if pending in results:
        pending = None
    # Causes, from the failure reports (`ERROR: desc` / dashes / traceback).
    causes = {}
    i = 0
    while i < len(lines):
        if lines[i] == SEPARATOR_EQ and i + 1 < len(lines):
            header = REPORT_HEADER_RE.match(lines[i + 1])
            j = i + 2
            body = []
            if header and j < len(lines) and lines[j] != SEPARATOR_DASH and j + 1 < len(lines) \
                    and lines[j + 1] == SEPARATOR_DASH:
                j += 1  # the test's docstring line
            if header and j < len(lines) and lines[j] == SEPARATOR_DASH:
                j += 1
                while j < len(lines) and lines[j] not in (SEPARATOR_EQ, SEPARATOR_DASH):
                    body.append(lines[j])
                    j += 1
                match = START_RE.match(header.group("desc"))
                if match:
                    key = test_key(match.group("name"), match.group("id"))
                    cause = stable_cause(exception_line("\n".join(body))) or header.group("kind").lower()
                    causes.setdefault(key, cause)
                i = j
                continue
        i += 1
    for key, cause in early_causes.items():
        causes.setdefault(key, cause)
    for key, cause in causes.items():
        if key in results and results[key]["status"] in ("FAIL", "ERROR", "unexpected success"):
            results[key]["detail"] = cause
        elif key not in results:
            # A fixture error (setUpModule, setUpClass) reported without a verbose line.
            results[key] = {"status": "ERROR", "detail": cause}
    return results, pending


def finished(text, runner):
    if runner == "regrtest":
        return "== Tests result:" in text or "\nTests result:" in text
    return re.search(r"^Ran \d+ tests? in ", text, re.M) is not None


class Trace:
    """Reads the sandbox's stderr: `--strace` lines (one per syscall) are counted, not kept: each
    ENOSYS result is charged to the test that was running (from the runner's marker stat) and to
    the module; everything else (the program's own stderr, the monitor's messages) is kept."""
    KEEP = 4 << 20  # bytes of non-trace stderr kept

    def __init__(self):
        self.current = None
        self.enosys = collections.defaultdict(collections.Counter)  # test id or None -> {syscall: calls}
        self.other = []
        self.kept = 0

    def consume(self, stream):
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            match = STRACE_RE.match(line)
            if match:
                marker = MARKER_RE.search(line)
                if marker:
                    self.current = marker.group("test")
                elif match.group("result").startswith("-1 ENOSYS"):
                    self.enosys[self.current][syscall_name(match.group("name"))] += 1
            elif line.startswith("catalyzer: unimplemented syscalls"):
                continue  # the monitor's own total of what was counted above
            elif self.kept < self.KEEP:
                self.other.append(line)
                self.kept += len(line) + 1

    def module_counts(self):
        total = collections.Counter()
        for counts in self.enosys.values():
            total.update(counts)
        return total


_SYSCALL_NAMES = None


def syscall_name(name):
    """strace prints syscalls the monitor does not know as syscall_N: name them from the host's
    <asm/unistd_64.h> when it is there."""
    global _SYSCALL_NAMES
    match = re.match(r"syscall_(\d+)$", name)
    if not match:
        return name
    if _SYSCALL_NAMES is None:
        _SYSCALL_NAMES = syscall_names()
    number = int(match.group(1))
    return _SYSCALL_NAMES.get(number, name)


def syscall_names():
    names = {}
    for header in ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h"):
        try:
            with open(header) as f:
                for line in f:
                    match = re.match(r"#define __NR_(\w+) (\d+)", line)
                    if match:
                        names[int(match.group(2))] = match.group(1)
            break
        except OSError:
            continue
    return names


# ---------------------------------------------------------------------------------------------
# Running


def runner_arguments(runner, module):
    if runner == "regrtest":
        return [PYTHON, "-c", REGRTEST_BOOT, "-v", module]
    return [PYTHON, "-c", UNITTEST_BOOT, "test." + module]


def default_signal_dispositions():
    """Both sides start with every signal at its default action and none blocked, as the
    sandbox's first process does: a run started in the background (where SIGINT and SIGQUIT are
    ignored) or from a test runner (with signals blocked) must not make the host differ."""
    for number in range(1, signal.NSIG):
        if number in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(number, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def run_process(argv, timeout, env):
    """Runs argv in its own process group with stdout and stderr merged. Returns (output, exit
    status or None on our own timeout, seconds)."""
    started = time.monotonic()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=env, start_new_session=True,
                               preexec_fn=default_signal_dispositions)
    try:
        output, _ = process.communicate(timeout=timeout)
        status = process.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        output, _ = process.communicate()
        status = None
    return output.decode("utf-8", "replace"), status, time.monotonic() - started


def run_sandbox(args, runner, module):
    """Runs the module in the sandbox with --strace. Returns (stdout, filtered stderr, exit status
    or None on our own timeout, timed out, seconds, Trace)."""
    argv = [args.catalyzer, "run", "--rootfs", args.rootfs, "--memory", args.memory,
            "--timeout", "%gs" % args.timeout, "--strace"]
    for key, value in ENVIRONMENT.items():
        argv += ["--env", "%s=%s" % (key, value)]
    argv += ["--"] + runner_arguments(runner, module)
    started = time.monotonic()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    trace = Trace()
    stdout = []
    readers = [threading.Thread(target=lambda: stdout.append(process.stdout.read())),
               threading.Thread(target=trace.consume, args=(process.stderr,))]
    for reader in readers:
        reader.start()
    try:
        status = process.wait(timeout=args.timeout + 60)  # the monitor's --timeout comes first
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        status = None
    for reader in readers:
        reader.join()
    output = b"".join(stdout).decode("utf-8", "replace")
    return output, "\n".join(trace.other), status, status in (None, 124), time.monotonic() - started, trace


def run_host(args, runner, module):
    argv = ["unshare", "--mount", "--pid", "--net", "--fork", "--", "/bin/sh", "-c", HOST_SETUP, "sh",
            args.rootfs, args.memory] + runner_arguments(runner, module)
    output, status, seconds = run_process(argv, args.timeout, dict(ENVIRONMENT))
    return output, status, status is None, seconds


def describe_exit(status):
    if status is None:
        return "timed out"
    if status < 0:
        return "signal %d" % -status
    if status > 128:
        return "exit %d (signal %d)" % (status, status - 128)
    return "exit %d" % status


def side_result(output, status, timed_out, seconds, runner, stderr="", trace=None):
    tests, pending = parse_output(output)
    complete = finished(output, runner) and not timed_out
    if timed_out:
        end = "timed out"
    elif complete:
        end = None
    else:
        end = "crashed: " + describe_exit(status)
    startup = ""
    if not tests:
        skipped = re.search(r"^\S+ skipped -- (.*)$", output, re.M)  # regrtest skipped the whole module
        startup = "skipped: " + skipped.group(1) if skipped else exception_line(output + "\n" + stderr)
    if end:
        # What the monitor said last (a fault, a deadlock), else the error that stopped the run
        # before any test.
        said = [l for l in (output + "\n" + stderr).splitlines() if l.startswith("catalyzer:")]
        if said:
            end += " (" + said[-1] + ")"
        elif startup:
            end += " (" + startup + ")"
    if pending and end:
        tests[pending] = {"status": "timed out" if timed_out else "crashed", "detail": end}
    enosys = {}
    if trace:
        for key, calls in trace.enosys.items():
            names = sorted(set(calls) - IGNORED_ENOSYS)
            if key in tests and names:
                tests[key]["enosys"] = names
            elif key is None and names and end and not tests:
                end += " [ENOSYS: %s]" % ", ".join(names)  # what failed before any test started
        enosys = dict(trace.module_counts().most_common())
    return {
        "exit": status, "timedOut": timed_out, "complete": complete, "end": end, "seconds": round(seconds, 1),
        "startupError": startup, "tests": tests, "enosys": enosys,
    }


def counts(side):
    c = collections.Counter()
    for test in side["tests"].values():
        status = test["status"]
        c["passed" if status in PASSED else "skipped" if status == "skipped"
          else "failed" if status in ("FAIL", "ERROR", "unexpected success") else "interrupted"] += 1
    return c


def summary_text(side):
    c = counts(side)
    parts = ["%d passed" % c["passed"]]
    for word in ("failed", "skipped", "interrupted"):
        if c[word]:
            parts.append("%d %s" % (c[word], word))
    if side["end"]:
        parts.append(side["end"])
    elif not side["tests"] and side["startupError"]:
        parts.append(side["startupError"])
    return ", ".join(parts)


def compare(host, sandbox):
    """Differences, test by test: [(key, host outcome, sandbox outcome, cause)]."""
    differences = []
    not_run = sandbox["end"] or "not reported by the sandbox run"
    # Class and module fixtures that failed or skipped in the sandbox explain the tests under them.
    fixtures = {}
    for key, s in sandbox["tests"].items():
        prefix, _, name = key.rpartition(".")
        if name in ("setUpClass", "setUpModule") and s["status"] != "ok":
            fixtures[prefix + "."] = "%s %s: %s" % (name, s["status"], s["detail"] or s["status"])
    for key, h in host["tests"].items():
        s = sandbox["tests"].get(key)
        if s is None:
            fixture = next((cause for prefix, cause in fixtures.items() if key.startswith(prefix)), None)
            differences.append((key, h["status"], "not run", fixture or not_run))
        elif s["status"] != h["status"]:
            cause = s["detail"] or s["status"]
            if s.get("enosys") and s["status"] not in PASSED:
                cause += " [ENOSYS: %s]" % ", ".join(s["enosys"])
            if s["status"] == "skipped":
                cause = "skipped: " + (s["detail"] or "no reason")
            elif s["status"] in PASSED and h["status"] not in PASSED:
                cause = "host: " + (h["detail"] or h["status"])
            differences.append((key, h["status"], s["status"], cause))
    for key, s in sandbox["tests"].items():
        if key not in host["tests"]:
            differences.append((key, "not run", s["status"], s["detail"] or "only in the sandbox"))
    return differences


def ratio(host, sandbox):
    passing = [k for k, t in host["tests"].items() if t["status"] in PASSED]
    if not passing:
        return None
    also = sum(1 for k in passing if sandbox["tests"].get(k, {}).get("status") in PASSED)
    return also / len(passing)


def short_name(key, module):
    prefix = "test." + module + "."
    return key[len(prefix):] if key.startswith(prefix) else key


# ---------------------------------------------------------------------------------------------
# Reports


def git_commit():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def bar_text(module, requirements, verdicts):
    kind = requirements.get(module)
    if kind is None:
        return "–"
    ok = verdicts[module]
    label = "same as host" if kind == "same" else "≥%g%% of host passes" % (kind * 100)
    return ("met: " if ok else "**missed**: ") + label


def markdown(report, requirements, verdicts_by_runner, command):
    out = []
    out.append("# CPython regression tests: sandbox vs host\n")
    out.append("Generated by `Scripts/cpython-compat.py`; do not edit by hand. It reflects the sandbox kernel "
               "(`Sources/CatalyzerKernel`) at commit `%s`, run on %s. The command:\n"
               % (report["commit"], report["date"]))
    out.append("```sh\n%s\n```\n" % command)
    out.append(
        "Each module runs in the sandbox (`catalyzer run --rootfs R --memory %s --timeout %gs`) and on the host "
        "(`chroot R` as root, in a private mount and PID namespace with a read-only R, tmpfs `/tmp` and `/dev/shm`, "
        "its own `/proc`, and the host's `/dev/null`, `zero`, `random`, `urandom`), one after the other, with "
        "the same environment (`PATH`, `TMPDIR=/tmp`, `PYTHONUNBUFFERED=1`). R is the test rootfs "
        "(`Scripts/build-test-rootfs.sh`): the function rootfs plus Debian's `libpython3.11-testsuite` and numpy; "
        "it has no `/bin/sh`, `/etc/services` or pty devices, so tests that need them fail on the host as well. "
        "Outcomes come from unittest's verbose lines; a difference's cause is the exception line of the "
        "sandbox's traceback, the skip reason, or how the sandbox run ended (\"timed out\", \"crashed: <exit status>\"; "
        "the tests it did not reach are \"not run\"). \"passed\" counts `ok` and `expected failure`.\n"
        % (report["memory"], report["timeout"]))
    out.append("Runners: `regrtest` is `python3 -m test -v MODULE`; `unittest` is `python3 -m unittest -v "
               "test.MODULE` from a fresh directory under `/tmp` with no test resources enabled (as regrtest "
               "without `-u`), which, unlike regrtest, does not need faulthandler.\n")
    for runner, modules in report["runs"].items():
        verdicts = verdicts_by_runner[runner]
        out.append("## Runner `%s`\n" % runner)
        out.append("| module | host | sandbox | same as host | host passes also passing in the sandbox | bar |")
        out.append("|---|---|---|---|---|---|")
        for module, result in modules.items():
            r = result["ratio"]
            out.append("| `%s` | %s | %s | %s | %s | %s |" % (
                module, summary_text(result["host"]), summary_text(result["sandbox"]),
                "yes" if result["same"] else "no (%d differ)" % len(result["differences"]),
                "–" if r is None else "%.1f%%" % (r * 100), bar_text(module, requirements, verdicts)))
        out.append("")
        enosys = collections.Counter()
        where = collections.defaultdict(list)
        failing = collections.Counter()
        for module, result in modules.items():
            for name, calls in result["sandbox"]["enosys"].items():
                enosys[name] += calls
                where[name].append(module)
            for key, _, sandbox_status, _ in result["differences"]:
                for name in result["sandbox"]["tests"].get(key, {}).get("enosys", []):
                    failing[name] += 1
        if enosys:
            out.append("Unimplemented syscalls (ENOSYS) in the sandbox, from its syscall trace: calls, the "
                       "differing tests that made them, and the modules:\n")
            out.append("| syscall | calls | differing tests | modules |")
            out.append("|---|---|---|---|")
            for name, calls in enosys.most_common():
                out.append("| `%s` | %d | %d | %s |" % (name, calls, failing[name], ", ".join(where[name])))
            out.append("")
        causes = collections.Counter()
        for module, result in modules.items():
            for _, _, _, cause in result["differences"]:
                causes[cause] += 1
        if causes:
            out.append("Most common causes of differences:\n")
            out.append("| tests | cause |")
            out.append("|---|---|")
            for cause, n in causes.most_common(25):
                out.append("| %d | %s |" % (n, md_escape(cause)))
            out.append("")
        host_failures = collections.OrderedDict()
        for module, result in modules.items():
            host = result["host"]
            for key, test in host["tests"].items():
                if test["status"] in ("FAIL", "ERROR", "unexpected success"):
                    host_failures.setdefault((module, test["detail"] or test["status"]), []).append(short_name(key, module))
            if not host["tests"] and host["startupError"]:
                host_failures.setdefault((module, host["startupError"]), [])
        if host_failures:
            out.append("Tests that fail on the host too (they count for neither side):\n")
            for (module, cause), keys in host_failures.items():
                out.append("- `%s`: %s%s" % (module, md_escape(cause), " (%d): %s" % (len(keys), ", ".join("`%s`" % k for k in keys)) if keys else ""))
            out.append("")
        out.append("### Differences, test by test (`%s`)\n" % runner)
        for module, result in modules.items():
            differences = result["differences"]
            if not differences:
                continue
            out.append("#### `%s` (%d)\n" % (module, len(differences)))
            sandbox = result["sandbox"]
            if not sandbox["tests"] and all(d[2] == "not run" for d in differences):
                out.append("No test ran in the sandbox: %s. The host ran %d tests (%d passed).\n"
                           % (md_escape(differences[0][3]), len(differences), counts(result["host"])["passed"]))
                continue
            grouped = collections.OrderedDict()
            for key, h, s, cause in differences:
                grouped.setdefault((h, s, cause), []).append(short_name(key, module))
            for (h, s, cause), keys in sorted(grouped.items(), key=lambda item: -len(item[1])):
                out.append("- host %s, sandbox %s: %s (%d): %s" % (
                    h, s, md_escape(cause), len(keys), ", ".join("`%s`" % k for k in keys)))
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def md_escape(text):
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------------------------------


def parse_log(path):
    """--parse: the outcomes read from a saved verbose output, as JSON (for checking the parser)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    trace = Trace()
    trace.consume(line.encode() for line in text.splitlines(keepends=True))
    result = side_result(text, 0, False, 0, "unittest", "", trace)
    tests, pending = parse_output(text)
    json.dump({"tests": result["tests"], "pending": pending,
               "finished": {r: finished(text, r) for r in ("regrtest", "unittest")},
               "enosys": result["enosys"]}, sys.stdout, indent=1)
    print()
    return 0


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description="Run CPython regression test modules in the sandbox and on the host and compare them test by test.",
        epilog="Put --require-same / --require-ratio after the modules (or end their lists with --): they take "
               "lists. Required modules are run even when not listed as MODULE.")
    parser.add_argument("modules", nargs="*", metavar="MODULE", help="e.g. test_json, test_asyncio.test_events")
    parser.add_argument("--rootfs", required=True, help="test rootfs (Scripts/build-test-rootfs.sh)")
    parser.add_argument("--catalyzer", required=True, help="path of the catalyzer binary")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per module and side (default 300)")
    parser.add_argument("--memory", default="1G", help="sandbox memory, also the host's /tmp size (default 1G)")
    parser.add_argument("--runner", default="regrtest",
                        help="comma-separated runners: regrtest (python3 -m test -v) and/or unittest (default regrtest)")
    parser.add_argument("--markdown", help="write a markdown report here")
    parser.add_argument("--json", help="write every outcome as JSON here")
    parser.add_argument("--logs", help="keep each run's raw output in this directory")
    parser.add_argument("--require-same", nargs="+", default=[], metavar="MOD",
                        help="fail unless these modules have the host's outcome for every test")
    parser.add_argument("--require-ratio", nargs="+", action="append", default=[], metavar="RATIO MOD",
                        help="RATIO then modules: fail unless RATIO of their host-passing tests pass in the sandbox")
    args = parser.parse_args(argv)
    args.runners = [r.strip() for r in args.runner.split(",") if r.strip()]
    for runner in args.runners:
        if runner not in ("regrtest", "unittest"):
            parser.error("unknown runner %r (regrtest, unittest)" % runner)
    requirements = collections.OrderedDict()
    for module in args.require_same:
        requirements[module] = "same"
    for group in args.require_ratio:
        try:
            value = float(group[0])
        except ValueError:
            parser.error("--require-ratio takes a ratio first, then modules: got %r" % group[0])
        if not 0 < value <= 1 or len(group) < 2:
            parser.error("--require-ratio RATIO MOD...: RATIO in (0, 1] and at least one module")
        for module in group[1:]:
            requirements[module] = value
    modules = list(collections.OrderedDict.fromkeys(args.modules + list(requirements)))
    if not modules:
        parser.error("no modules given")
    args.catalyzer = os.path.abspath(args.catalyzer)
    args.rootfs = os.path.abspath(args.rootfs)
    if not os.access(args.catalyzer, os.X_OK):
        parser.error("%s is not an executable" % args.catalyzer)
    if not os.path.isfile(os.path.join(args.rootfs, "usr/lib/python3.11/test/libregrtest/main.py")) or \
            not os.path.isdir(os.path.join(args.rootfs, "proc")):
        parser.error("%s is not a test rootfs (build it with Scripts/build-test-rootfs.sh)" % args.rootfs)
    if os.geteuid() != 0:
        parser.error("the host run needs root (unshare, mount, chroot)")
    return args, modules, requirements


def verdict(kind, result):
    """Whether a module's result meets its bar: "same", or a ratio of the host's passes."""
    if kind == "same":
        return result["same"] and bool(result["host"]["tests"])
    return result["ratio"] is not None and result["ratio"] >= kind


def write_markdown(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def render(json_path, markdown_path):
    """--render: the markdown report again, from a run's --json output (no tests are run)."""
    with open(json_path) as f:
        report = json.load(f, object_pairs_hook=collections.OrderedDict)
    for results in report["runs"].values():
        for result in results.values():
            result["differences"] = [(d["test"], d["host"], d["sandbox"], d["cause"]) for d in result["differences"]]
    requirements = report.get("requirements")
    if requirements is None:  # written before requirements were recorded: read them off the command
        _, _, requirements = parse_arguments(shlex.split(report["command"])[1:])
    verdicts = {runner: {module: verdict(kind, results[module]) for module, kind in requirements.items() if module in results}
                for runner, results in report["runs"].items()}
    write_markdown(markdown_path, markdown(report, requirements, verdicts, report["command"]))
    return 0


def save_log(args, runner, module, side, text):
    if args.logs:
        with open(os.path.join(args.logs, "%s.%s.%s.log" % (runner, module, side)), "w") as f:
            f.write(text)


def main(argv):
    if len(argv) == 2 and argv[0] == "--parse":
        return parse_log(argv[1])
    if len(argv) == 3 and argv[0] == "--render":
        return render(argv[1], argv[2])
    args, modules, requirements = parse_arguments(argv)
    command = " ".join(shlex.quote(a) for a in ["Scripts/cpython-compat.py"] + argv)
    report = {"commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "memory": args.memory, "timeout": args.timeout, "command": command, "runs": {}}
    if args.logs:
        os.makedirs(args.logs, exist_ok=True)
    verdicts_by_runner = {}
    missed = []
    for runner in args.runners:
        results = collections.OrderedDict()
        verdicts = {}
        for module in modules:
            sides = {}
            print("cpython-compat: %s %s: host ..." % (runner, module), file=sys.stderr, flush=True)
            output, status, timed_out, seconds = run_host(args, runner, module)
            save_log(args, runner, module, "host", output)
            sides["host"] = side_result(output, status, timed_out, seconds, runner)
            print("cpython-compat: %s %s: sandbox ..." % (runner, module), file=sys.stderr, flush=True)
            output, stderr, status, timed_out, seconds, trace = run_sandbox(args, runner, module)
            save_log(args, runner, module, "sandbox", output + "\n--- stderr (without the syscall trace)\n" + stderr)
            sides["sandbox"] = side_result(output, status, timed_out, seconds, runner, stderr, trace)
            host, sandbox = sides["host"], sides["sandbox"]
            differences = compare(host, sandbox)
            same = not differences and sandbox["complete"] == host["complete"]
            r = ratio(host, sandbox)
            results[module] = {"host": host, "sandbox": sandbox, "differences": differences, "same": same, "ratio": r}
            kind = requirements.get(module)
            if kind is not None:
                verdicts[module] = verdict(kind, results[module])
            line = "%-36s host: %s | sandbox: %s | %s" % (
                module, summary_text(host), summary_text(sandbox),
                "same" if same else "%d differ" % len(differences))
            if r is not None:
                line += " | %.1f%% of host passes" % (r * 100)
            if kind is not None:
                line += " | bar %s" % ("met" if verdicts[module] else "MISSED")
                if not verdicts[module]:
                    missed.append("%s/%s" % (runner, module))
            print(line, flush=True)
        report["runs"][runner] = results
        verdicts_by_runner[runner] = verdicts
    report["requirements"] = requirements
    report["verdicts"] = verdicts_by_runner
    if args.json:
        serializable = json.loads(json.dumps(report, default=str))
        for runner, results in serializable["runs"].items():
            for module, result in results.items():
                result["differences"] = [dict(zip(("test", "host", "sandbox", "cause"), d)) for d in result["differences"]]
        with open(args.json, "w") as f:
            json.dump(serializable, f, indent=1)
    if args.markdown:
        write_markdown(args.markdown, markdown(report, requirements, verdicts_by_runner, command))
    if missed:
        print("cpython-compat: bar missed: " + ", ".join(missed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
