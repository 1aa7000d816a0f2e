import CatalyzerImage
import CatalyzerKernel
import CatalyzerRuntime
import CatalyzerTestSupport
import Foundation
import Testing

/// Sockets across a checkpoint: a function that connects to a host server at import (as a
/// database client would) finds that connection reset after a restore or a fork, and reconnects
/// under the network policy recorded in its image.
@Suite("network across checkpoint and restore", .serialized)
struct NetworkRestoreTests {
    /// The function: it connects to the TCP echo server at import. A request pings over that
    /// connection, or reconnects when it fails; `{"local": true}` runs a server and a client on
    /// the guest's own loopback.
    static func function(port: Int) -> [String] {
        ["/usr/bin/python3", "-c", """
        import runpy, sys
        with open("/tmp/fn.py", "w") as f:
            f.write('''
        import socket
        conn = socket.create_connection(("127.0.0.1", \(port)), timeout=10)
        conn.sendall(b"init")
        assert conn.recv(10) == b"init"
        def handler(event):
            global conn
            if event.get("local"):
                server = socket.socket()
                server.bind(("127.0.0.1", 0))
                server.listen()
                client = socket.create_connection(server.getsockname())
                peer, _ = server.accept()
                client.sendall(b"inside")
                data = peer.recv(10)
                for s in (client, peer, server): s.close()
                return {"local": data.decode()}
            try:
                conn.sendall(b"ping")
                reply = conn.recv(10)
                if not reply: raise ConnectionResetError("end of stream")
                return {"reused": reply.decode()}
            except OSError as error:
                first = type(error).__name__
            conn.close()
            try:
                conn = socket.create_connection(("127.0.0.1", \(port)), timeout=10)
            except OSError as error:
                return {"reset": first, "reconnect": type(error).__name__}
            conn.sendall(b"pong")
            return {"reset": first, "reconnect": conn.recv(10).decode()}
        ''')
        sys.argv = ["runner.py", "/tmp/fn.py"]
        runpy.run_path("/opt/catalyzer/runner.py", run_name="__main__")
        """]
    }

    /// The handler's result for `{}` from a fork of `function`, or nil (recorded) when there is none.
    static func forkedResult(_ service: ForkingFunctionService, _ function: String) async throws -> String? {
        let response = try await service.invoke(FunctionRequest(function: function, event: Array("{}".utf8), timeoutSeconds: 30))
        guard case .result(let bytes) = response.outcome else {
            Issue.record("expected a result, got \(response.outcome): \(String(decoding: response.logTail, as: UTF8.self))")
            return nil
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static let requests = Data("{}\n{}\n{\"local\": true}\n".utf8)

    @Test("cold, the import-time connection serves; restored, it is reset and the function reconnects under the image's policy; --no-network narrows it")
    func restoredConnectionIsReset() throws {
        let servers = try LoopbackServers()
        defer { servers.stop() }
        let scene = try RestoreScene("network")
        defer { scene.close() }
        let rootfs = try PythonRootfs.path()
        let rule = "127.0.0.1:\(servers.tcpEchoPort)"

        let cold = try scene.catalyzer(["run", "--rootfs", rootfs, "--net-allow", rule, "--"] + Self.function(port: servers.tcpEchoPort),
                                       stdin: Self.requests)
        #expect(cold.status == 0, "\(cold)")
        #expect(cold.stdout == """
            {"ok":true,"result":{"reused":"ping"}}
            {"ok":true,"result":{"reused":"ping"}}
            {"ok":true,"result":{"local":"inside"}}

            """, "\(cold)")

        try scene.checkpoint("net", rootfs: rootfs, options: ["--net-allow", rule], Self.function(port: servers.tcpEchoPort))
        let inspected = try scene.catalyzer(["image", "inspect", "net"])
        #expect(inspected.stdout.contains("network         allow \(rule)\n"), "\(inspected)")
        let restored = try scene.invoke("net", stdin: Self.requests)
        #expect(restored.status == 0, "\(restored)")
        #expect(restored.stdout == """
            {"ok":true,"result":{"reset":"ConnectionResetError","reconnect":"pong"}}
            {"ok":true,"result":{"reused":"ping"}}
            {"ok":true,"result":{"local":"inside"}}

            """, "\(restored)")

        let narrowed = try scene.invoke("net", input: "{}", options: ["--no-network"])
        #expect(narrowed.stdout == #"{"ok":true,"result":{"reset":"ConnectionResetError","reconnect":"ConnectionRefusedError"}}"# + "\n",
                "\(narrowed)")
    }

    /// A function whose import leaves sockets within the sandbox: a listener served by a thread
    /// blocked in accept, a connection waiting in another listener's backlog with data sent on it,
    /// a socketpair and a UDP socket with data queued.
    static let localSockets = ["/usr/bin/python3", "-c", """
        import runpy, sys
        with open("/tmp/fn.py", "w") as f:
            f.write('''
        import socket, threading
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        def serve():
            while True:
                connection, _ = server.accept()
                connection.sendall(connection.recv(100).upper())
                connection.close()
        threading.Thread(target=serve, daemon=True).start()
        backlog = socket.socket(socket.AF_INET6)
        backlog.bind(("::1", 0))
        backlog.listen()
        early = socket.create_connection(backlog.getsockname()[:2])
        early.sendall(b"early bird")
        a, b = socket.socketpair()
        a.sendall(b"queued before the checkpoint")
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"datagram", udp.getsockname())
        def handler(event):
            client = socket.create_connection(server.getsockname())
            client.sendall(b"thread")
            answer = client.recv(100).decode()
            connection, _ = backlog.accept()
            pending = connection.recv(100).decode()
            early.sendall(b"!")
            return {"thread": answer, "pending": pending, "pair": b.recv(100).decode(), "udp": udp.recv(100).decode(),
                    "early peer": connection.recv(1).decode(), "port kept": server.getsockname()[1] > 0}
        ''')
        sys.argv = ["runner.py", "/tmp/fn.py"]
        runpy.run_path("/opt/catalyzer/runner.py", run_name="__main__")
        """]

    @Test("listening, connected and datagram sockets within the sandbox, with their queues and a thread blocked in accept, are checkpointed and work after restore and fork")
    func localSocketsSurviveCheckpoint() async throws {
        let scene = try RestoreScene("network-local")
        defer { scene.close() }
        let rootfs = try PythonRootfs.path()
        let expected = #"{"ok":true,"result":{"thread":"THREAD","pending":"early bird","pair":"queued before the checkpoint","udp":"datagram","early peer":"!","port kept":true}}"# + "\n"
        let cold = try scene.catalyzer(["run", "--rootfs", rootfs, "--"] + Self.localSockets, stdin: Data("{}\n".utf8))
        #expect(cold.stdout == expected, "\(cold)")
        try scene.checkpoint("local", rootfs: rootfs, Self.localSockets)
        for _ in 0..<2 {
            let restored = try scene.invoke("local", input: "{}")
            #expect(restored.stdout == expected, "\(restored)")
        }
        let mounted = try scene.catalyzer(["mount", "--store", scene.store.root])
        try #require(mounted.status == 0, "\(mounted)")
        defer { _ = try? scene.catalyzer(["mount", "--unmount"]) }
        let service = try ForkingFunctionService(store: scene.store, mount: mounted.stdout.trimmingCharacters(in: .whitespacesAndNewlines),
                                                 poolSize: 1, reuse: 1)
        defer { service.shutdown() }
        for _ in 0..<2 {
            guard let result = try await Self.forkedResult(service, "local") else { return }
            #expect("{\"ok\":true,\"result\":" + result + "}\n" == expected)
        }
    }

    @Test("a fork of a template whose function connected at import gets a reset socket, and reconnects under the image's policy, or not under the daemon's narrower one")
    func forkedConnectionIsReset() async throws {
        let servers = try LoopbackServers()
        defer { servers.stop() }
        let scene = try RestoreScene("network-fork")
        defer { scene.close() }
        try scene.checkpoint("net", rootfs: try PythonRootfs.path(), options: ["--net-allow", "127.0.0.1:\(servers.tcpEchoPort)"],
                             Self.function(port: servers.tcpEchoPort))
        let mounted = try scene.catalyzer(["mount", "--store", scene.store.root])
        try #require(mounted.status == 0, "\(mounted)")
        defer { _ = try? scene.catalyzer(["mount", "--unmount"]) }
        let service = try ForkingFunctionService(store: scene.store, mount: mounted.stdout.trimmingCharacters(in: .whitespacesAndNewlines),
                                                 poolSize: 1, reuse: 1)
        defer { service.shutdown() }
        for _ in 0..<2 {
            guard let result = try await Self.forkedResult(service, "net") else { return }
            #expect(result == #"{"reset":"ConnectionResetError","reconnect":"pong"}"#)
        }
        // `serve --no-network net`: the daemon's policy for the function replaces the image's.
        let narrowed = try ForkingFunctionService(store: scene.store, mount: mounted.stdout.trimmingCharacters(in: .whitespacesAndNewlines),
                                                  poolSize: 1, reuse: 1, networkOverrides: ["net": .none])
        defer { narrowed.shutdown() }
        guard let narrowedResult = try await Self.forkedResult(narrowed, "net") else { return }
        #expect(narrowedResult == #"{"reset":"ConnectionResetError","reconnect":"ConnectionRefusedError"}"#)
    }
}
