"""Catalyzer's reference function runner.

Contract (see README "Function runner"):
    python3 /opt/catalyzer/runner.py /functions/NAME.py

imports the function module once, then reads one JSON request per line on stdin and writes
one JSON response per line on stdout, calling ``handler(event)`` from the module:

    {"ok": true, "result": <whatever handler returned>}
    {"ok": false, "error": {"type": "ValueError", "message": "...", "traceback": "..."}}

A handler exception or a request that is not JSON becomes an error response and the runner
keeps serving. EOF on stdin ends the runner with status 0: it runs the ``atexit`` handlers and
flushes its output, then exits at once, skipping the interpreter's teardown (freeing every
module and object), which would only keep the caller waiting for a sandbox about to be discarded.

The runner's first blocking read of stdin is the function's *ready point*: a checkpoint taken
there holds the imported module, and every restored instance resumes inside that read. So
right after the first request arrives, and never before, the runner reseeds ``random`` from
``os.urandom`` (served fresh by the monitor) and sets ``CATALYZER_INSTANCE_ID`` to a new UUID:
two instances restored from one image never share random sequences or ids.
"""

import atexit
import importlib.util
import json
import os
import random
import sys
import traceback
import uuid


def load(path):
    """Imports the function module at ``path`` once; its import-time work is the init cost."""
    spec = importlib.util.spec_from_file_location("function", path)
    if spec is None:
        sys.exit(f"runner: {path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "handler", None)):
        sys.exit(f"runner: {path} defines no handler(event) function")
    return module


def start_instance():
    """Makes this instance distinct from every other one restored from the same image."""
    random.seed(os.urandom(32))
    os.environ["CATALYZER_INSTANCE_ID"] = str(uuid.UUID(bytes=os.urandom(16), version=4))


def respond(response):
    sys.stdout.write(json.dumps(response, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


def error(exc):
    return {"ok": False, "error": {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }}


def serve(module, stdin):
    started = False
    while True:
        line = stdin.readline()
        if not line:
            return
        if not started:
            start_instance()
            started = True
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError as exc:
            respond(error(exc))
            continue
        try:
            respond({"ok": True, "result": module.handler(event)})
        except Exception as exc:  # a handler's failure is the caller's answer, not ours
            respond(error(exc))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: runner.py /functions/NAME.py")
    module = load(sys.argv[1])
    # Unbuffered binary stdin wrapped for lines: the read blocks in one read(2) on fd 0,
    # which is where the monitor recognizes the ready point.
    stdin = open(0, "r", buffering=1, encoding="utf-8", closefd=False)
    serve(module, stdin)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
