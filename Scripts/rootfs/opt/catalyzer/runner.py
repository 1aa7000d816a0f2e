"""Catalyzer's reference function runner.

Contract (see README "Function runner"):
    python3 /opt/catalyzer/runner.py /functions/NAME.py            calls handler() of that file
    python3 /opt/catalyzer/runner.py CODE_DIR [MODULE.FUNCTION]   as AWS Lambda names a handler
                                                                  (default app.handler)

imports the function module once, then reads one JSON request per line on stdin and writes
one JSON response per line on stdout, calling the handler as Lambda's Python runtime does,
``handler(event, context)``, or ``handler(event)`` when it takes one argument:

    {"ok": true, "result": <whatever handler returned>}
    {"ok": false, "error": {"type": "ValueError", "message": "...", "traceback": "..."}}

The context has Lambda's fields: aws_request_id (fresh per request), function_name,
function_version, memory_limit_in_mb (the sandbox's memory), invoked_function_arn,
log_group_name, log_stream_name and get_remaining_time_in_millis() (from the timeout in
CATALYZER_TIMEOUT_MS, 30 s by default). What the handler prints, and logging, go to stderr, the
instance's log; only the response goes to stdout.

A handler exception or a request that is not JSON becomes an error response and the runner
keeps serving. EOF on stdin ends the runner with status 0: it runs the ``atexit`` handlers and
flushes its output, then exits at once, skipping the interpreter's teardown (freeing every
module and object), which would only keep the caller waiting for a sandbox about to be discarded.

The runner's first blocking read of stdin is the function's *ready point*: a checkpoint taken
there holds the imported module, and every restored instance resumes inside that read. So
right after the first request arrives, and never before, the runner reseeds ``random`` from
``os.urandom`` (served fresh by the monitor), reseeds OpenSSL's generator when ``ssl`` is loaded,
and sets ``CATALYZER_INSTANCE_ID`` to a new UUID: two instances restored from one image never
share random sequences or ids.
"""

import atexit
import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import random
import sys
import time
import traceback
import uuid


def load(path, handler_name=None):
    """Imports the function module once (its import-time work is the init cost) and returns its
    handler: ``handler`` of the file ``path``, or ``MODULE.FUNCTION`` from the directory ``path``."""
    if os.path.isdir(path):
        module_name, _, function_name = (handler_name or "app.handler").rpartition(".")
        if not module_name or not function_name:
            sys.exit(f"runner: the handler {handler_name!r} is not MODULE.FUNCTION (e.g. app.handler)")
        sys.path.insert(0, path)
        module = importlib.import_module(module_name)
    else:
        function_name = handler_name or "handler"
        spec = importlib.util.spec_from_file_location("function", path)
        if spec is None:
            sys.exit(f"runner: {path} is not a Python module")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    handler = getattr(module, function_name, None)
    if not callable(handler):
        sys.exit(f"runner: {path} defines no {function_name}(event, context) function")
    return handler


def takes_context(handler):
    """Whether the handler takes (event, context), as Lambda calls it, or only (event)."""
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def sandbox_memory_mb():
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


class Context:
    """The context object of Lambda's Python runtime."""

    def __init__(self, name, deadline):
        self.aws_request_id = str(uuid.UUID(bytes=os.urandom(16), version=4))
        self.function_name = name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = sandbox_memory_mb()
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{name}"
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = time.strftime("%Y/%m/%d") + "/[$LATEST]" + os.environ.get("CATALYZER_INSTANCE_ID", "")
        self._deadline = deadline

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def start_instance():
    """Makes this instance distinct from every other one restored from the same image."""
    random.seed(os.urandom(32))
    # OpenSSL's generator lives in the checkpointed memory too. Once something drew from it
    # before the ready point (an SSL context made at import, as a boto3 client or a requests
    # session makes), every instance would continue the same state: equal TLS secrets. RAND_add
    # reseeds it from fresh kernel entropy. Left alone when ssl was never imported: then
    # nothing seeded it before the checkpoint, and it seeds itself fresh on first use.
    ssl = sys.modules.get("ssl")
    if ssl is not None:
        ssl.RAND_add(os.urandom(48), 48.0)
    os.environ["CATALYZER_INSTANCE_ID"] = str(uuid.UUID(bytes=os.urandom(16), version=4))


# The response stream: stdout as the runner found it. While a handler runs, sys.stdout is the
# log (stderr), so nothing it prints can land in a response.
responses = sys.stdout


def respond(response):
    responses.write(json.dumps(response, separators=(",", ":"), default=str) + "\n")
    responses.flush()


def error(exc):
    return {"ok": False, "error": {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }}


def serve(handler, stdin, name):
    started = False
    with_context = takes_context(handler)
    timeout = int(os.environ.get("CATALYZER_TIMEOUT_MS", "30000") or 30000) / 1000
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
            with contextlib.redirect_stdout(sys.stderr):
                if with_context:
                    result = handler(event, Context(name, time.monotonic() + timeout))
                else:
                    result = handler(event)
            respond({"ok": True, "result": result})
        except Exception as exc:  # a handler's failure is the caller's answer, not ours
            respond(error(exc))


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: runner.py /functions/NAME.py | runner.py CODE_DIR [MODULE.FUNCTION]")
    path = sys.argv[1]
    handler = load(path, sys.argv[2] if len(sys.argv) == 3 else None)
    name = os.environ.get("CATALYZER_FUNCTION_NAME") or os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    # Unbuffered binary stdin wrapped for lines: the read blocks in one read(2) on fd 0,
    # which is where the monitor recognizes the ready point.
    stdin = open(0, "r", buffering=1, encoding="utf-8", closefd=False)
    serve(handler, stdin, name)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
