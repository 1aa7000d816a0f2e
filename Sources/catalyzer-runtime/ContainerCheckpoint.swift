import CatalyzerImage
import CatalyzerKVM
import CatalyzerKernel
import CatalyzerOCI
import CatalyzerRuntime
import Foundation
import Glibc

/// `checkpoint --image-path DIR` and `restore --image-path DIR`, the commands podman's and
/// containerd's checkpoint features call, with Catalyzer images in place of CRIU's.
///
/// A checkpoint is taken by the container's monitor, asked through the exec socket: between two
/// slices of the sandbox's tasks (wherever its threads are; a syscall they wait in re-runs after
/// the restore) it captures the kernel state, writable root and in-memory mounts included, and
/// writes guest memory and state as image `container` of a Catalyzer store at DIR/catalyzer (an
/// OCI image layout: chunks compressed and content-addressed, as every image). Unless
/// `--leave-running`, the sandbox then ends, as CRIU's dump ends the process tree.
///
/// A restore mounts that store with catalyzerfs and resumes the sandbox from the image, memory
/// served lazily on first touch, against the root the engine prepared for the restore, with the
/// engine's stdio and bound files.
enum ContainerCheckpoint {
    static let imageName = "container"

    static func storeRoot(imagePath: String) -> String {
        URL(fileURLWithPath: imagePath).standardizedFileURL.path + "/catalyzer"
    }

    /// The file an engine checks to know a checkpoint in DIR is complete: CRIU writes its
    /// `inventory.img` last, and podman refuses to restore without one. Here it is written last
    /// too, after the image is published, and holds a reference to it (JSON), not CRIU's format.
    static let completionMarker = "inventory.img"

    struct ImageReference: Codable {
        var format = "catalyzer-image-reference"
        var store: String
        var image: String
        var manifestDigest: String
    }

    /// In the monitor, on the sandbox's thread, the sandbox paused: writes the image, then the
    /// completion marker naming it.
    static func write(_ sandbox: Sandbox, imagePath: String, containerID: String) throws -> ImageCreateReport {
        let report = try writeImage(sandbox, imagePath: imagePath, containerID: containerID)
        let reference = ImageReference(store: "catalyzer", image: imageName, manifestDigest: report.manifestDigest.description)
        let marker = URL(fileURLWithPath: imagePath).appendingPathComponent(completionMarker)
        try JSONEncoder().encode(reference).write(to: marker, options: .atomic)
        return report
    }

    private static func writeImage(_ sandbox: Sandbox, imagePath: String, containerID: String) throws -> ImageCreateReport {
        let snapshot = try sandbox.captureRunningSnapshot()
        var options = ImageCreateOptions()
        options.state = CheckpointState(kernel: snapshot, chunkSize: options.chunkSize, network: .none).encoded()
        options.annotations = ["dev.catalyzer.container": containerID, "dev.catalyzer.rootfs": snapshot.rootfs.path]
        try FileManager.default.createDirectory(atPath: imagePath, withIntermediateDirectories: true)
        let store = ImageStore(root: storeRoot(imagePath: imagePath))
        let memory = sandbox.guestMemory
        switch memory.backing {
        case .privateFile:
            // A restored sandbox: its memory is the image file mapped privately, the pages it
            // changed only in the mapping. The mapping is streamed through a pipe.
            return try withStreamedMapping(memory) { fd in
                try store.createImage(named: imageName, from: fd, sourceName: "guest memory of container \(containerID)", options: options)
            }
        default:
            // A memfd: read through a file description of its own (offset 0; holes read as zeros
            // without being allocated).
            let fd = open("/proc/self/fd/\(memory.fd)", O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw ContainerError.system("cannot reopen the guest memory: \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            return try store.createImage(named: imageName, from: fd, sourceName: "guest memory of container \(containerID)", options: options)
        }
    }

    /// Calls `body` with the read end of a pipe a thread fills with `memory`'s bytes.
    private static func withStreamedMapping<T>(_ memory: GuestMemory, _ body: (Int32) throws -> T) throws -> T {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw ContainerError.system("cannot make a pipe: \(String(cString: strerror(errno)))") }
        let writer = ends[1]
        let source = SendableMapping(base: memory.base, size: memory.size)
        let thread = Thread {
            var done = 0
            while done < source.size {
                let count = Glibc.write(writer, source.base + done, min(1 << 20, source.size - done))
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { break }
                done += count
            }
            close(writer)
        }
        thread.start()
        defer { close(ends[0]) }
        return try body(ends[0])
    }

    private struct SendableMapping: @unchecked Sendable {
        let base: UnsafeMutableRawPointer
        let size: Int
    }

    /// The container process of a restore: the sandbox resumed from the image at `storeRoot` (it
    /// keeps the catalyzerfs mount it maps memory from).
    static func restoredSandbox(storeRoot: String, plan: SandboxPlan, standardStreams: [Int32]) throws -> RestoredSandbox {
        let store = ImageStore(root: storeRoot)
        let mount: CatalyzerMount
        do {
            mount = try CatalyzerMount.managed(store: store)
        } catch {
            throw ContainerError.system("cannot mount the checkpoint's store \(storeRoot) with catalyzerfs: \(error)")
        }
        var options = RestoreOptions()
        options.standardStreams = standardStreams
        options.rootDirectory = plan.configuration.rootDirectory
        options.mounts = plan.configuration.mounts
        options.limits = plan.configuration.limits
        options.network = NetworkPolicy.none
        do {
            return try RestoredSandbox(image: imageName, mount: mount, store: store, options: options)
        } catch {
            throw ContainerError.system("cannot restore from \(storeRoot): \(error)")
        }
    }

    /// Takes down the catalyzerfs mount of a restored container's store (on delete); a failure
    /// is logged, and the mount stays.
    static func unmount(storeRoot: String) {
        do {
            try CatalyzerMount.unmountManaged(store: ImageStore(root: storeRoot))
        } catch {
            RuntimeLog.write("warning", "cannot unmount the catalyzerfs mount of the restored image \(storeRoot): \(error)")
        }
    }
}
