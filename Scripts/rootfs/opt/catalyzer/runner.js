'use strict';
/*
 * Catalyzer's Node.js function runner: the contract of runner.py, for Lambda's Node.js handlers.
 *
 *     node /opt/catalyzer/runner.js CODE_DIR [MODULE.FUNCTION]     (default app.handler)
 *
 * loads the module (CODE_DIR/MODULE.js, .cjs or .mjs, or a directory) once, then reads one JSON
 * request per line on stdin and writes one JSON response per line on stdout:
 *
 *     {"ok": true, "result": <what the handler returned or resolved to>}
 *     {"ok": false, "error": {"type": "TypeError", "message": "...", "traceback": "..."}}
 *
 * The handler is called as Lambda's Node.js runtime calls it: `async (event, context)` (its
 * promise is awaited), or `(event, context, callback)` when it declares three parameters. The
 * context has Lambda's fields (awsRequestId, functionName, functionVersion, memoryLimitInMB,
 * invokedFunctionArn, logGroupName, logStreamName, getRemainingTimeInMillis(),
 * callbackWaitsForEmptyEventLoop). console output and process.stdout go to stderr, the
 * instance's log; only responses go to stdout.
 *
 * The ready point is the runner's first read of stdin: a blocking read(2) on fd 0 by the main
 * thread, made with fs.readSync, so the checkpoint holds the loaded module and nothing else is in
 * flight. The event loop runs only while a handler's promise is pending, as Lambda freezes an
 * environment between invocations.
 *
 * Instances restored from one image share every byte of memory: OpenSSL's random generator
 * state (node seeds it at start-up), V8's Math.random state and node's cache of random bytes for
 * randomUUID among it. So right after the first request arrives, and never before, the runner
 * reseeds OpenSSL from fresh kernel entropy (reseed.node, built beside this file; without it the
 * runner refuses to serve rather than hand out repeated random numbers), then seeds Math.random
 * from it and sets CATALYZER_INSTANCE_ID to a new UUID.
 * crypto.randomUUID always draws fresh bytes, never the per-process cache, which may have been
 * filled before the checkpoint. Math.random and randomUUID are replaced before the function's
 * module loads, so references it keeps get the per-instance versions.
 */

const fs = require('fs');
const path = require('path');
const util = require('util');

function usage(message) {
  fs.writeSync(2, `runner.js: ${message}\n`);
  process.exit(2);
}

// The response stream is fd 1, written synchronously. process.stdout and console write to the
// log (stderr) so nothing a handler prints can land in a response.
const log = new console.Console({ stdout: process.stderr, stderr: process.stderr });
globalThis.console = log;
Object.defineProperty(process, 'stdout', { get: () => process.stderr, configurable: true });

function load(codeDirectory, handlerName) {
  const dot = handlerName.lastIndexOf('.');
  if (dot <= 0 || dot === handlerName.length - 1) {
    usage(`the handler ${JSON.stringify(handlerName)} is not MODULE.FUNCTION (e.g. app.handler)`);
  }
  const moduleName = handlerName.slice(0, dot);
  const functionName = handlerName.slice(dot + 1);
  const base = path.resolve(codeDirectory, moduleName.split('.').join('/'));
  let file = null;
  for (const candidate of [base + '.js', base + '.cjs', base]) {
    if (fs.existsSync(candidate)) { file = candidate; break; }
  }
  if (file === null) {
    usage(`${codeDirectory} has no module ${moduleName} (looked for ${moduleName}.js, .cjs and a directory)`);
  }
  const module = require(file);
  const handler = module[functionName];
  if (typeof handler !== 'function') {
    usage(`${file} exports no ${functionName}(event, context) function`);
  }
  return handler;
}

function sandboxMemoryMB() {
  try {
    const match = /^MemTotal:\s+(\d+)/m.exec(fs.readFileSync('/proc/meminfo', 'latin1'));
    return match ? Math.floor(Number(match[1]) / 1024) : 0;
  } catch {
    return 0;
  }
}

function uuidFrom(bytes) {
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

const rotl = (x, k) => (x << k) | (x >>> (32 - k));

/**
 * xoshiro128** from a 16-byte seed: a Math.random for one instance, in 32-bit integer operations
 * (fast in V8), each double made of two draws (53 random bits, as V8's own).
 */
function xoshiro128(seed) {
  let a = seed.readUInt32LE(0) | 0, b = seed.readUInt32LE(4) | 0, c = seed.readUInt32LE(8) | 0, d = seed.readUInt32LE(12) | 0;
  if ((a | b | c | d) === 0) a = 1;  // the all-zero state is the one it never leaves
  function next() {
    const result = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    c ^= a; d ^= b; b ^= c; a ^= d; c ^= t; d = rotl(d, 11);
    return result;
  }
  return function random() { return ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992; };
}

const crypto = require('crypto');
let reseedOpenSSL = null;
try {
  reseedOpenSSL = require(path.join(__dirname, 'reseed.node')).reseed;
} catch (error) {
  reseedOpenSSL = () => {
    throw new Error(`cannot load ${path.join(__dirname, 'reseed.node')} (${error.message}); rebuild the runtime rootfs`);
  };
}

// Per-instance randomness, installed before the function's module loads. Until the first request
// Math.random is V8's own (initialization code may use it; its state is shared by every restored
// instance, so nothing drawn then should be a secret), after it a generator seeded per instance.
const v8Random = Math.random;
let instanceRandom = null;
Math.random = function random() { return instanceRandom === null ? v8Random() : instanceRandom(); };
const bufferedUUID = crypto.randomUUID;
crypto.randomUUID = function randomUUID() { return bufferedUUID({ disableEntropyCache: true }); };
if (globalThis.crypto && typeof globalThis.crypto.randomUUID === 'function') {
  const webUUID = globalThis.crypto.randomUUID.bind(globalThis.crypto);
  globalThis.crypto.randomUUID = function randomUUID() { return instanceRandom === null ? webUUID() : bufferedUUID({ disableEntropyCache: true }); };
}

/** Makes this instance distinct from every other one restored from the same image. */
function startInstance() {
  try {
    reseedOpenSSL();
  } catch (error) {
    usage(`cannot reseed OpenSSL's random generator for this instance (${error.message}); refusing to serve requests ` +
      'whose random numbers every restored instance would share');
  }
  instanceRandom = xoshiro128(crypto.randomBytes(16));
  process.env.CATALYZER_INSTANCE_ID = uuidFrom(crypto.randomBytes(16));
}

function day() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, '0');
  return `${now.getUTCFullYear()}/${pad(now.getUTCMonth() + 1)}/${pad(now.getUTCDate())}`;
}

function context(name, timeoutMS) {
  const deadline = Date.now() + timeoutMS;
  return {
    awsRequestId: uuidFrom(crypto.randomBytes(16)),
    functionName: name,
    functionVersion: '$LATEST',
    memoryLimitInMB: String(sandboxMemoryMB()),
    invokedFunctionArn: `arn:aws:lambda:local:000000000000:function:${name}`,
    logGroupName: `/aws/lambda/${name}`,
    logStreamName: `${day()}/[$LATEST]${process.env.CATALYZER_INSTANCE_ID || ''}`,
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
}

function respond(response) {
  let text;
  try {
    text = JSON.stringify(response);
  } catch (error) {
    text = JSON.stringify(failure(error));
  }
  const bytes = Buffer.from((text === undefined ? 'null' : text) + '\n');
  let written = 0;
  while (written < bytes.length) written += fs.writeSync(1, bytes, written);
}

function failure(error) {
  if (error instanceof Error) {
    return { ok: false, error: { type: error.name || 'Error', message: error.message, traceback: error.stack || String(error) } };
  }
  return { ok: false, error: { type: typeof error, message: util.inspect(error), traceback: '' } };
}

/** Lines of stdin, read with blocking read(2) calls on fd 0. */
function lineReader() {
  const buffer = Buffer.alloc(1 << 16);
  let pending = Buffer.alloc(0);
  const pause = new Int32Array(new SharedArrayBuffer(4));
  return function nextLine() {
    for (;;) {
      const newline = pending.indexOf(10);
      if (newline >= 0) {
        const line = pending.subarray(0, newline).toString('utf8');
        pending = pending.subarray(newline + 1);
        return line;
      }
      let count;
      try {
        count = fs.readSync(0, buffer, 0, buffer.length, null);
      } catch (error) {
        if (error.code === 'EAGAIN') { Atomics.wait(pause, 0, 0, 1); continue; }  // a non-blocking stdin (a host run)
        if (error.code === 'EOF') return null;
        throw error;
      }
      if (count === 0) {
        if (pending.length === 0) return null;
        const line = pending.toString('utf8');
        pending = Buffer.alloc(0);
        return line;
      }
      pending = Buffer.concat([pending, buffer.subarray(0, count)]);
    }
  };
}

function call(handler, event, ctx) {
  if (handler.length >= 3) {
    return new Promise((resolve, reject) => {
      const callback = (error, result) => (error ? reject(error) : resolve(result));
      try {
        const returned = handler(event, ctx, callback);
        if (returned && typeof returned.then === 'function') returned.then(resolve, reject);
      } catch (error) {
        reject(error);
      }
    });
  }
  return Promise.resolve().then(() => handler(event, ctx));
}

/**
 * A promise rejected when the event loop runs out of work while a handler's promise is still
 * pending: nothing could ever settle it, and node would exit. The request gets an error instead
 * and the runner goes on to the next one.
 */
function stalled() {
  return new Promise((resolve, reject) => {
    const onEmpty = () => {
      process.removeListener('beforeExit', onEmpty);
      const error = new Error('the handler returned a promise that never settled, and nothing was left to run that could settle it');
      error.name = 'Runtime.HandlerNeverSettled';
      setImmediate(() => reject(error));  // work for the loop, so node goes round again instead of exiting
    };
    process.on('beforeExit', onEmpty);
    stalled.cancel = () => process.removeListener('beforeExit', onEmpty);
  });
}

async function serve(handler, name) {
  const nextLine = lineReader();
  const timeoutMS = Number(process.env.CATALYZER_TIMEOUT_MS) || 30000;
  let started = false;
  for (;;) {
    const line = nextLine();
    if (line === null) return;
    if (!started) {
      startInstance();
      started = true;
    }
    if (line.trim() === '') continue;
    let event;
    try {
      event = JSON.parse(line);
    } catch (error) {
      respond(failure(error));
      continue;
    }
    try {
      const result = await Promise.race([call(handler, event, context(name, timeoutMS)), stalled()]);
      respond({ ok: true, result: result === undefined ? null : result });
    } catch (error) {
      respond(failure(error));
    } finally {
      stalled.cancel();
    }
  }
}

function main() {
  const args = process.argv.slice(2);
  if (args.length < 1 || args.length > 2) usage('usage: node runner.js CODE_DIR [MODULE.FUNCTION]');
  const handler = load(args[0], args[1] || 'app.handler');
  const name = process.env.CATALYZER_FUNCTION_NAME || path.basename(path.resolve(args[0]));
  serve(handler, name).then(
    () => process.exit(0),
    (error) => { fs.writeSync(2, `runner.js: ${error.stack || error}\n`); process.exit(1); },
  );
}

main();
