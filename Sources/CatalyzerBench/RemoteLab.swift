import CatalyzerImage
import Foundation
import Glibc
import Synchronization

/// Nodes and a registry on one machine, each in its own network namespace: `REGISTRY` runs
/// Debian's docker-registry behind a proxy that delays every byte by half the round-trip delay
/// each way (the kernels here have no `netem`), and every node reaches it over its own veth pair
/// at `RemoteLab.registryAddress`. Commands run in a node's namespace with `nsenter --net` (the
/// mount namespace stays the host's, so catalyzerfs mounts behave as usual). `tearDown` kills
/// what it started (by process id) and deletes the namespaces.
public final class RemoteLab: @unchecked Sendable {
    /// Where every node reaches the registry (an address on the registry namespace's loopback,
    /// routed through each node's veth link).
    public static let registryAddress = "10.213.78.1:5000"

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public struct Result: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
        public var seconds: Double
    }

    public let directory: String
    public let nodes: [String]
    let tag = "cz\(getpid() % 100000)"
    private var processes: [Process] = []

    public init(nodes: [String], delayMillis: Double) throws {
        self.nodes = nodes
        directory = NSTemporaryDirectory() + "/catalyzer-remote-lab-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        do {
            var script = "set -e\nip netns add \(tag)-registry\nip -n \(tag)-registry link set lo up\nip -n \(tag)-registry addr add 10.213.78.1/32 dev lo\n"
            for (index, node) in nodes.enumerated() {
                let registrySide = "10.213.77.\(4 * index + 1)", nodeSide = "10.213.77.\(4 * index + 2)"
                script += """
                    ip netns add \(namespace(node))
                    ip -n \(namespace(node)) link set lo up
                    ip link add \(tag)r\(index) type veth peer name \(tag)n\(index)
                    ip link set \(tag)r\(index) netns \(tag)-registry
                    ip link set \(tag)n\(index) netns \(namespace(node))
                    ip -n \(tag)-registry addr add \(registrySide)/30 dev \(tag)r\(index)
                    ip -n \(tag)-registry link set \(tag)r\(index) up
                    ip -n \(namespace(node)) addr add \(nodeSide)/30 dev \(tag)n\(index)
                    ip -n \(namespace(node)) link set \(tag)n\(index) up
                    ip -n \(namespace(node)) route add 10.213.78.1/32 via \(registrySide)

                    """
            }
            try shell(script)
            try """
                version: 0.1
                log:
                  level: error
                  accesslog:
                    disabled: true
                storage:
                  filesystem:
                    rootdirectory: \(directory)/registry
                http:
                  addr: 127.0.0.1:5001
                """.write(toFile: directory + "/registry.yml", atomically: true, encoding: .utf8)
            try start(["nsenter", "--net=/run/netns/\(tag)-registry", "timeout", "-s", "KILL", "3600", "/usr/bin/docker-registry", "serve", directory + "/registry.yml"])
            try Self.proxyScript.write(toFile: directory + "/proxy.py", atomically: true, encoding: .utf8)
            try start(["nsenter", "--net=/run/netns/\(tag)-registry", "timeout", "-s", "KILL", "3600", "python3", directory + "/proxy.py",
                       "0.0.0.0", "5000", "127.0.0.1", "5001", String(delayMillis / 2000)])
            for node in nodes {
                try shell("for i in $(seq 100); do nsenter --net=/run/netns/\(namespace(node)) python3 -c 'import socket, urllib.request; urllib.request.urlopen(\"http://\(Self.registryAddress)/v2/\", timeout=1)' 2>/dev/null && exit 0; sleep 0.1; done; echo 'the registry is not reachable from \(node)' >&2; exit 1")
            }
        } catch {
            tearDown()
            throw error
        }
    }

    public func namespace(_ node: String) -> String { "\(tag)-\(node)" }

    public func tearDown() {
        for process in processes where process.isRunning {
            // env → nsenter → timeout → the server: the whole chain, by process id.
            Self.killTree(process.processIdentifier)
            process.waitUntilExit()
        }
        processes.removeAll()
        _ = try? shell((nodes.map { "ip netns del \(namespace($0)) 2>/dev/null;" } + ["ip netns del \(tag)-registry 2>/dev/null; true"]).joined(separator: " "))
        try? FileManager.default.removeItem(atPath: directory)
    }

    static func killTree(_ pid: Int32) {
        let text = FileIO.readToEnd("/proc/\(pid)/task/\(pid)/children") ?? ""
        for child in text.split(separator: " ").compactMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
            killTree(child)
        }
        kill(pid, SIGKILL)
    }

    private func start(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        processes.append(process)
    }

    @discardableResult
    public func shell(_ script: String) throws -> String {
        let result = try Self.run(["/bin/sh", "-c", script], environment: [:], stdin: nil)
        guard result.status == 0 else { throw Failure(description: "\(script) failed (\(result.status)): \(result.stderr)") }
        return result.stdout
    }

    /// Runs `executable arguments` in `node`'s network namespace, bounded by `seconds`.
    public func run(on node: String, _ executable: String, _ arguments: [String], environment: [String: String] = [:],
                    stdin: Data? = nil, seconds: Int = 300) throws -> Result {
        try Self.run(["nsenter", "--net=/run/netns/\(namespace(node))", "timeout", "-s", "KILL", String(seconds), executable] + arguments,
                     environment: environment, stdin: stdin)
    }

    static func run(_ arguments: [String], environment: [String: String], stdin: Data?) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let output = Pipe(), errors = Pipe(), input = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = input
        let started = Date()
        try process.run()
        if let stdin { input.fileHandleForWriting.write(stdin) }
        try input.fileHandleForWriting.close()
        let errorData = Mutex<Data>(Data())
        let drained = DispatchSemaphore(value: 0)
        let errorHandle = errors.fileHandleForReading
        Thread.detachNewThread {
            let bytes = errorHandle.readDataToEndOfFile()
            errorData.withLock { $0 = bytes }
            drained.signal()
        }
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        drained.wait()
        return Result(status: process.terminationStatus, stdout: String(decoding: data, as: UTF8.self),
                      stderr: errorData.withLock { String(decoding: $0, as: UTF8.self) }, seconds: Date().timeIntervalSince(started))
    }

    /// Forwards TCP, delaying every chunk of bytes by the given seconds in each direction.
    static let proxyScript = #"""
        import asyncio, sys, time
        host, port, target, target_port, delay = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
        async def pump(reader, writer):
            queue = asyncio.Queue()
            async def send():
                while True:
                    due, data = await queue.get()
                    wait = due - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
                writer.close()
            sender = asyncio.create_task(send())
            while True:
                try:
                    data = await reader.read(1 << 16)
                except OSError:
                    data = b""
                await queue.put((time.monotonic() + delay, data))
                if not data:
                    break
            await sender
        async def handle(reader, writer):
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(target, target_port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer), return_exceptions=True)
        async def main():
            server = await asyncio.start_server(handle, host, port)
            async with server:
                await server.serve_forever()
        asyncio.run(main())
        """#
}
