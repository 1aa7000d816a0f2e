import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Testing

/// Functions in the style of the SeBS serverless benchmark suite, each created with
/// `function create` from a code directory and a requirements file (wheels from PyPI), restored
/// with `invoke`, and compared with the same handler run on the host (the function's rootfs under
/// chroot, the same runner).
@Suite("function suite (SeBS style)", .serialized)
struct FunctionSuiteTests {
    struct Function {
        var name: String
        var requirements: String?
        var memory = "256M"
        var event: String
        var code: String
    }

    static func functions(httpPort: Int) -> [Function] {
        [
            Function(name: "dynamic-html", requirements: "Jinja2==3.1.6\n", event: #"{"username": "ann", "items": 5}"#, code: """
                import hashlib
                from jinja2 import Template
                page = Template("<h1>Hello {{ username }}</h1><ul>{% for i in items %}<li>{{ i }}</li>{% endfor %}</ul>")
                def handler(event, context):
                    html = page.render(username=event["username"], items=[i * i for i in range(event["items"])])
                    return {"length": len(html), "sha256": hashlib.sha256(html.encode()).hexdigest(), "head": html[:30]}
                """),
            Function(name: "thumbnail", requirements: "pillow==11.3.0\n", event: #"{"width": 640, "height": 480}"#, code: """
                import hashlib, io
                from PIL import Image, ImageDraw
                def handler(event, context):
                    image = Image.new("RGB", (event["width"], event["height"]), (20, 40, 60))
                    draw = ImageDraw.Draw(image)
                    for i in range(0, event["width"], 16):
                        draw.line((i, 0, event["width"] - i, event["height"]), fill=(i % 256, 128, 255 - i % 256), width=3)
                    image.thumbnail((128, 128))
                    out = io.BytesIO()
                    image.save(out, format="PNG")
                    return {"size": image.size, "png sha256": hashlib.sha256(out.getvalue()).hexdigest()}
                """),
            Function(name: "yaml-to-json", requirements: "PyYAML==6.0.2\n", event: #"{"yaml": "a: [1, 2, {b: null}]\nc: text"}"#, code: """
                import json, yaml
                def handler(event, context):
                    return json.dumps(yaml.safe_load(event["yaml"]), sort_keys=True)
                """),
            Function(name: "matrix", requirements: "numpy==2.4.6\n", memory: "512M", event: #"{"n": 120}"#, code: """
                import numpy
                def handler(event, context):
                    n = event["n"]
                    a = numpy.arange(n * n, dtype=numpy.float64).reshape(n, n) / n
                    b = numpy.linalg.inv(numpy.eye(n) * 3 + 0.01)
                    spectrum = numpy.fft.rfft(numpy.sin(numpy.arange(1024) / 7.0))
                    return {"product": round(float((a @ b).sum()), 6), "fft peak": int(numpy.argmax(numpy.abs(spectrum)))}
                """),
            Function(name: "graph", requirements: "networkx==3.4.2\n", event: #"{"nodes": 300, "seed": 7}"#, code: """
                import networkx
                def handler(event, context):
                    graph = networkx.barabasi_albert_graph(event["nodes"], 3, seed=event["seed"])
                    order = list(networkx.bfs_tree(graph, 0))
                    rank = {node: 1 / len(graph) for node in graph}
                    for _ in range(30):  # PageRank by power iteration (networkx's own needs scipy)
                        rank = {node: 0.15 / len(graph) + 0.85 * sum(rank[m] / graph.degree(m) for m in graph[node]) for node in graph}
                    top = max(rank, key=rank.get)
                    return {"bfs": order[:10], "visited": len(order), "top": top, "rank": round(rank[top], 9)}
                """),
            Function(name: "fetch", requirements: "requests==2.34.2\n", event: #"{"path": "/"}"#, code: """
                import requests
                session = requests.Session()
                def handler(event, context):
                    reply = session.post("http://127.0.0.1:\(httpPort)" + event["path"], json={"echo": event["path"]}, timeout=10)
                    return {"status": reply.status_code, "body": reply.json()}
                """),
            Function(name: "compress", requirements: nil, event: #"{"size": 200000}"#, code: """
                import hashlib, io, tarfile, zlib
                def handler(event, context):
                    data = bytes((i * 7919) % 251 for i in range(event["size"]))
                    packed = zlib.compress(data, 6)
                    archive = io.BytesIO()
                    with tarfile.open(fileobj=archive, mode="w") as tar:
                        info = tarfile.TarInfo("data.bin"); info.size = len(data); info.mtime = 0
                        tar.addfile(info, io.BytesIO(data))
                    return {"zlib": len(packed), "tar sha256": hashlib.sha256(archive.getvalue()).hexdigest(),
                            "round trip": zlib.decompress(packed) == data}
                """),
        ]
    }

    @Test("each SeBS-style function, created from code and requirements, answers restored as it does on the host")
    func functionsMatchTheHost() throws {
        let servers = try LoopbackServers()
        defer { servers.stop() }
        let scene = try RestoreScene("function-suite")
        defer { scene.close() }
        for function in Self.functions(httpPort: servers.httpPort) {
            let code = scene.directory.file(function.name)
            try FileManager.default.createDirectory(atPath: code, withIntermediateDirectories: true)
            try function.code.write(toFile: code + "/app.py", atomically: true, encoding: .utf8)
            var options = ["--memory", function.memory, "--net-allow", "127.0.0.1:\(servers.httpPort)"]
            if let requirements = function.requirements {
                try requirements.write(toFile: code + "/requirements.txt", atomically: true, encoding: .utf8)
                options += ["--requirements", code + "/requirements.txt"]
            }
            let created = try scene.catalyzer(["function", "create", function.name, "--code", code,
                                               "--runtime-rootfs", try PythonRootfs.path()] + options)
            try #require(created.status == 0, "\(function.name): \(created)")

            let restored = try scene.invoke(function.name, input: function.event)
            let image = try scene.store.open(function.name)
            let rootfs = scene.store.rootfsPath(for: try #require(image.config.rootfs?.layers))
            let host = try Command.run("/usr/bin/env", ["-i", "PATH=/usr/bin:/bin", "CATALYZER_FUNCTION_NAME=\(function.name)",
                                                        "/usr/sbin/chroot", rootfs, "/usr/bin/python3", "/opt/catalyzer/runner.py",
                                                        "/var/task", "app.handler"],
                                       stdin: Data((function.event + "\n").utf8))
            #expect(restored.status == 0 && restored.stdout.hasPrefix(#"{"ok":true"#), "\(function.name): \(restored)")
            #expect(restored.stdout == host.stdout, "\(function.name): sandbox \(restored) host \(host)")
        }
        let listed = try scene.catalyzer(["function", "ls"])
        for function in Self.functions(httpPort: servers.httpPort) { #expect(listed.stdout.contains(function.name), "\(listed)") }
    }
}
