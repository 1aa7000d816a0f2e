import CatalyzerTestSupport
import Foundation
import Testing

/// Drives the daemon with boto3 (Debian's `/usr/bin/python3`, package python3-boto3) or raw HTTP
/// through a small Python script: a list of calls in, one JSON result per call out.
enum LambdaClient {
    static let script = #"""
import base64, json, socket, sys, threading, urllib.request, urllib.error
import boto3, botocore.config, botocore.exceptions

spec = json.loads(sys.stdin.read())

def client():
    return boto3.client(
        "lambda", endpoint_url=spec["endpoint"], region_name=spec.get("region", "us-east-1"),
        aws_access_key_id=spec.get("key", "AKIDTEST"), aws_secret_access_key=spec.get("secret", "unused"),
        config=botocore.config.Config(retries={"total_max_attempts": 1}, max_pool_connections=64,
                                      read_timeout=120, connect_timeout=10))

def run(call, lam):
    op = call["op"]
    try:
        if op == "invoke":
            args = {"FunctionName": call["function"], "Payload": call.get("payload", "{}").encode()}
            for key, name in (("type", "InvocationType"), ("log", "LogType"), ("qualifier", "Qualifier")):
                if key in call:
                    args[name] = call[key]
            r = lam.invoke(**args)
            out = {"status": r["StatusCode"], "payload": r["Payload"].read().decode(),
                   "functionError": r.get("FunctionError"), "version": r.get("ExecutedVersion"),
                   "requestId": r["ResponseMetadata"]["RequestId"]}
            if "LogResult" in r:
                out["log"] = base64.b64decode(r["LogResult"]).decode()
            return out
        if op == "list":
            r = lam.list_functions()
            return {"functions": r["Functions"]}
        if op == "get":
            r = lam.get_function(FunctionName=call["function"])
            return {"configuration": r["Configuration"], "code": r.get("Code")}
        if op == "pipelined":
            # Every request written at once on one connection, then the responses read in order.
            host, port = spec["endpoint"].split("//")[1].split(":")
            with socket.create_connection((host, int(port)), timeout=60) as sock:
                wire = b""
                for request in call["requests"]:
                    body = request.get("body", "").encode()
                    head = f"{request.get('method', 'POST')} {request['path']} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                    wire += (head + "".join(f"{k}: {v}\r\n" for k, v in request.get("headers", {}).items()) + "\r\n").encode() + body
                sock.sendall(wire)
                buffer, answers = b"", []
                while len(answers) < len(call["requests"]):
                    while b"\r\n\r\n" not in buffer:
                        chunk = sock.recv(65536)
                        if not chunk:
                            return {"answers": answers, "closed": True}
                        buffer += chunk
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    lines = head.decode().split("\r\n")
                    fields = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
                    length = int(fields.get("content-length", "0"))
                    while len(buffer) < length:
                        chunk = sock.recv(65536)
                        if not chunk:
                            return {"answers": answers, "closed": True}
                        buffer += chunk
                    answers.append({"status": int(lines[0].split()[1]), "body": buffer[:length].decode()})
                    buffer = buffer[length:]
                return {"answers": answers}
        if op == "http":
            body = call.get("body", "").encode() if "size" not in call else b"{" + b" " * (call["size"] - 2) + b"}"
            request = urllib.request.Request(spec["endpoint"] + call["path"], data=body if call.get("method", "GET") != "GET" else None,
                                             method=call.get("method", "GET"), headers=call.get("headers", {}))
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    return {"status": response.status, "headers": dict(response.headers), "body": response.read().decode()}
            except urllib.error.HTTPError as error:
                return {"status": error.code, "headers": dict(error.headers), "body": error.read().decode()}
    except botocore.exceptions.ClientError as error:
        return {"error": error.response["Error"]["Code"], "message": error.response["Error"].get("Message", ""),
                "httpStatus": error.response["ResponseMetadata"]["HTTPStatusCode"]}
    except Exception as error:
        return {"exception": type(error).__name__, "message": str(error)}

calls = spec["calls"]
results = [None] * len(calls)
if spec.get("parallel"):
    lam = client()
    def worker(i):
        results[i] = run(calls[i], lam)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
else:
    lam = client()
    for i, call in enumerate(calls):
        results[i] = run(call, lam)
print(json.dumps(results))
"""#

    /// Runs `calls` against `endpoint` (in parallel threads when `parallel`); one result per call.
    static func run(_ endpoint: String, _ calls: [[String: Any]], key: String = "AKIDTEST", secret: String = "unused",
                    parallel: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) throws -> [[String: Any]] {
        let spec: [String: Any] = ["endpoint": endpoint, "calls": calls, "key": key, "secret": secret, "parallel": parallel]
        let input = try JSONSerialization.data(withJSONObject: spec)
        let result = try Command.bounded(300, "/usr/bin/python3", ["-c", script], stdin: input)
        try #require(result.status == 0, "the boto3 client failed: \(result)", sourceLocation: sourceLocation)
        let decoded = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]]
        return try #require(decoded, "unreadable client output: \(result.stdout)", sourceLocation: sourceLocation)
    }

    static func one(_ endpoint: String, _ call: [String: Any], key: String = "AKIDTEST", secret: String = "unused",
                    sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        try run(endpoint, [call], key: key, secret: secret, sourceLocation: sourceLocation)[0]
    }

    /// The JSON value of a text (for comparing payloads regardless of key order and spacing).
    static func value(_ text: String?) -> NSObject? {
        guard let text else { return nil }
        return try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]) as? NSObject
    }
}
