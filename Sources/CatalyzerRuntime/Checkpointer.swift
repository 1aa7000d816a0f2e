import CKVM
import CatalyzerImage
import CatalyzerKernel
import Glibc

/// What to checkpoint: a program run cold in a sandbox until its ready point.
public struct CheckpointRequest: Sendable {
    public var name: String
    public var rootfs: String
    public var memorySize: Int
    /// The program's path inside the rootfs, and argv (argv[0] included).
    public var programPath: String
    public var arguments: [String]
    public var environment: [String]
    /// How long initialization may take before the checkpoint is abandoned.
    public var timeoutSeconds: Double
    /// Codec, level and chunk size of the image.
    public var image: ImageCreateOptions
    /// Threads plus processes the function may have (`--max-tasks`).
    public var limits = SandboxLimits()
    /// Pack the rootfs into an OCI layer that travels with the image (so it restores on nodes
    /// that never had the rootfs). Off only for development with a rootfs that is always local.
    public var packRootfs = true
    /// Layers already stored that make up the rootfs (a function built from runtime,
    /// dependencies and code layers, `FunctionBuilder`); the image carries these instead of one
    /// packed from the rootfs directory.
    public var rootfsLayers: [Descriptor]?
    /// Where the function may connect beyond its sandbox, while it initializes and in every
    /// instance restored from the image (recorded in its state).
    public var network = NetworkPolicy.none

    public init(name: String, rootfs: String, memorySize: Int, programPath: String, arguments: [String],
                environment: [String], timeoutSeconds: Double = 60, image: ImageCreateOptions = .init()) {
        self.name = name
        self.rootfs = rootfs
        self.memorySize = memorySize
        self.programPath = programPath
        self.arguments = arguments
        self.environment = environment
        self.timeoutSeconds = timeoutSeconds
        self.image = image
    }
}

public struct CheckpointReport: Sendable, Codable {
    public var image: ImageCreateReport
    /// Cold start to the ready point.
    public var initializationSeconds: Double
    public var syscalls: Int
    public var memoryInUse: Int
    public var stateBytes: Int
    public var rootfsFiles: Int
    public var rootfsFingerprint: String
    /// The rootfs layer the image carries (nil with `packRootfs` off).
    public var rootfsLayer: RootfsLayerReport?
    /// What the program wrote to stdout and stderr while it initialized.
    public var output: String
}

/// `catalyzer checkpoint`: runs a function cold until it first waits for a request, then publishes
/// its memory and state as an image. The program's stdin is an empty pipe that stays open, so the
/// first read of it is the ready point whatever the caller's stdin is; its stdout and stderr are
/// collected, to be shown if it never gets there.
public enum Checkpointer {
    public static func checkpoint(_ request: CheckpointRequest, store: ImageStore) throws -> CheckpointReport {
        guard ImageStore.isValidName(request.name) else { throw ImageError.invalidName(request.name) }
        var stdinPipe: [Int32] = [-1, -1]
        guard pipe(&stdinPipe) == 0 else { throw RuntimeError("cannot create the program's stdin pipe: \(String(cString: strerror(errno)))") }
        for end in stdinPipe { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        defer { close(stdinPipe[0]); close(stdinPipe[1]) }
        let output = try OutputCollector(limit: 16 << 10, keep: .last)
        var outputCollected = false
        defer { if !outputCollected { _ = output.finish() } }

        var configuration = SandboxConfiguration(rootDirectory: request.rootfs, memorySize: request.memorySize,
                                                 programPath: request.programPath, arguments: request.arguments,
                                                 environment: request.environment)
        configuration.standardStreams = [stdinPipe[0], output.writeEnd, output.writeEnd]
        configuration.stopsAtReadyPoint = true
        configuration.limits = request.limits
        configuration.network = request.network
        let started = Sandbox.monotonicNanoseconds()
        let kernel: Sandbox
        do {
            kernel = try Sandbox(configuration: configuration)
        } catch {
            throw RuntimeError("cannot start \(request.programPath) in \(request.rootfs): \(error); no image was created")
        }
        let exit = try kernel.run(timeoutSeconds: request.timeoutSeconds)
        let initialization = Double(Sandbox.monotonicNanoseconds() - started) / 1e9
        let snapshot = exit == .readyPoint ? try kernel.captureSnapshot() : nil
        // The sandbox's stdio refers to the write end only through the kernel, which is done.
        let (tail, written) = output.finish()
        outputCollected = true
        let captured = (written > tail.count ? "[… \(written - tail.count) earlier bytes left out]\n" : "")
            + String(decoding: tail, as: UTF8.self)
        guard exit == .readyPoint else {
            throw RuntimeError("\(request.programPath) \(Self.describe(exit, timeout: request.timeoutSeconds)) before its ready point (its first read of stdin with no data); no image was created."
                               + (captured.isEmpty ? " It wrote nothing." : " Its output:\n" + captured))
        }
        guard let snapshot else { throw RuntimeError("the sandbox stopped at its ready point but left no state") }
        let state = CheckpointState(kernel: snapshot, chunkSize: request.image.chunkSize, network: request.network).encoded()
        var options = request.image
        options.state = state
        options.annotations = (options.annotations ?? [:]).merging([
            "dev.catalyzer.rootfs": request.rootfs,
            "dev.catalyzer.command": request.arguments.joined(separator: " "),
        ]) { old, _ in old }
        // The rootfs as it is now, which the fingerprint just recorded; unchanged trees are not
        // packed again (see `storeRootfsLayer`).
        let layer = request.packRootfs && request.rootfsLayers == nil ? try store.storeRootfsLayer(from: snapshot.rootfs.path) : nil
        if let layer { options.rootfs = RootfsConfig(path: snapshot.rootfs.path, layers: [layer.descriptor]) }
        if let layers = request.rootfsLayers { options.rootfs = RootfsConfig(path: snapshot.rootfs.path, layers: layers) }
        let image = try store.createImage(named: request.name, from: kernel.guestMemory.fd, sourceName: "guest memory of \(request.programPath)",
                                          options: options)
        return CheckpointReport(image: image, initializationSeconds: initialization, syscalls: kernel.syscallCount,
                                memoryInUse: kernel.memoryInUse, stateBytes: state.count,
                                rootfsFiles: snapshot.rootfs.entries.count, rootfsFingerprint: snapshot.rootfs.digest,
                                rootfsLayer: layer, output: captured)
    }

    private static func describe(_ exit: SandboxExit, timeout: Double) -> String {
        switch exit {
        case .exited(let status): return "exited with status \(status)"
        case .killed(let signal, let reason): return "was killed by signal \(signal) (\(reason))"
        case .timedOut: return "did not reach its ready point within \(timeout) s (raise --timeout if it initializes slowly)"
        case .readyPoint: return "stopped"
        }
    }
}
