// swift-tools-version:6.0
// Catalyzer: serverless sandboxes that start from checkpoint images served on first touch.
import PackageDescription

let package = Package(
    name: "Catalyzer",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "catalyzer", targets: ["catalyzer"]),
        .executable(name: "catalyzerfs", targets: ["catalyzerfs"]),
        .executable(name: "catalyzer-runtime", targets: ["catalyzer-runtime"]),
        .library(name: "CatalyzerImage", targets: ["CatalyzerImage"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
    ],
    targets: [
        // C libraries and shims: thin, no logic.
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CFuse3", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .target(name: "CKVM"),
        .target(name: "CLinux"),

        // Image format, codecs and the content-addressed local store.
        .target(
            name: "CatalyzerImage",
            dependencies: [
                "CZstd", "CLZ4", "CLinux",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The OCI distribution client: push and pull through a registry.
        .target(
            name: "CatalyzerRegistry",
            dependencies: [
                "CatalyzerImage",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // The FUSE filesystem that serves image memory on first touch.
        .target(name: "CatalyzerFS", dependencies: ["CFuse3", "CatalyzerImage"]),
        // /dev/kvm: VM, vCPU, memory slots, long mode, trap stubs.
        .target(name: "CatalyzerKVM", dependencies: ["CKVM"]),
        // The Linux ABI served by the monitor: ELF loading, address space, files, syscalls.
        .target(name: "CatalyzerKernel", dependencies: ["CatalyzerKVM"]),
        // Checkpoint at the ready point, restore through catalyzerfs, invoke; the managed mount.
        .target(name: "CatalyzerRuntime", dependencies: ["CatalyzerKernel", "CatalyzerKVM", "CKVM", "CLinux", "CatalyzerImage"]),
        // `catalyzer serve`: the AWS Lambda invoke API over HTTP in front of a FunctionService,
        // SigV4 auth, throttling, Prometheus metrics, graceful shutdown.
        .target(
            name: "CatalyzerServe",
            dependencies: [
                "CatalyzerRuntime", "CLinux",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
            ]
        ),
        // OCI runtime bundles: config.json as Codable types, checked into a sandbox configuration;
        // the containers' state under --root.
        .target(name: "CatalyzerOCI", dependencies: ["CatalyzerKernel"]),
        // Benchmark tools: statistics, tables, mounts, filesystem and image benchmarks.
        .target(name: "CatalyzerBench", dependencies: ["CatalyzerImage"]),
        // Benchmarks of the runtime (startup, serve): they depend on what they measure.
        .target(name: "CatalyzerBenchmarks", dependencies: ["CatalyzerRuntime", "CatalyzerKernel", "CatalyzerKVM", "CKVM", "CLinux", "CatalyzerImage", "CatalyzerBench"]),

        .executableTarget(
            name: "catalyzer",
            dependencies: [
                "CatalyzerImage", "CatalyzerBench", "CatalyzerBenchmarks", "CatalyzerKernel", "CatalyzerRuntime", "CatalyzerRegistry", "CatalyzerServe",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(name: "catalyzerfs", dependencies: ["CatalyzerFS", "CatalyzerImage", "CatalyzerRegistry"]),
        // The OCI runtime command line (runc's), for podman, containerd and Kubernetes.
        .executableTarget(
            name: "catalyzer-runtime",
            dependencies: [
                "CatalyzerOCI", "CatalyzerKernel", "CatalyzerKVM", "CatalyzerImage", "CatalyzerRuntime", "CLinux",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // Helpers shared by the test targets: running binaries, temp dirs, device checks.
        .target(name: "CatalyzerTestSupport", dependencies: ["CatalyzerImage", "CLinux"], path: "Tests/Support"),

        .testTarget(name: "CatalyzerRootfsTests", dependencies: ["CatalyzerTestSupport"]),
        // CPython's own regression tests in the sandbox vs the host (Scripts/cpython-compat.py).
        .testTarget(name: "CatalyzerCompatTests", dependencies: ["CatalyzerTestSupport", "catalyzer"]),
        .testTarget(
            name: "CatalyzerImageTests",
            dependencies: ["CatalyzerImage", "CatalyzerBench", "CatalyzerTestSupport", "catalyzer"]
        ),
        // Push and pull against Debian's docker-registry started by the tests; skopeo interop.
        .testTarget(
            name: "CatalyzerRegistryTests",
            dependencies: [
                "CatalyzerRegistry", "CatalyzerImage", "CatalyzerBench", "CatalyzerTestSupport", "catalyzer",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .testTarget(
            name: "CatalyzerOCITests",
            dependencies: ["CatalyzerOCI", "CatalyzerTestSupport", "catalyzer-runtime"]
        ),
        .testTarget(
            name: "CatalyzerKernelTests",
            dependencies: ["CatalyzerKernel", "CatalyzerKVM", "CKVM", "CatalyzerBenchmarks", "CatalyzerTestSupport", "catalyzer"]
        ),
        .testTarget(
            name: "CatalyzerRuntimeTests",
            dependencies: ["CatalyzerRuntime", "CatalyzerBenchmarks", "CatalyzerKernel", "CatalyzerImage", "CatalyzerTestSupport", "catalyzer", "catalyzerfs"]
        ),
        // SigV4 vectors, the event and error shapes, and the daemon driven by boto3 and the AWS CLI.
        .testTarget(
            name: "CatalyzerServeTests",
            dependencies: ["CatalyzerServe", "CatalyzerRuntime", "CatalyzerImage", "CatalyzerTestSupport", "catalyzer", "catalyzerfs",
                           .product(name: "HTTPTypes", package: "swift-http-types"), .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "CatalyzerFSTests",
            dependencies: ["CatalyzerFS", "CatalyzerImage", "CatalyzerTestSupport", "catalyzer", "catalyzerfs"]
        ),
    ]
)
