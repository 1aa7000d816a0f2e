import CatalyzerImage
import CatalyzerKVM
import CatalyzerKernel

/// The state blob of a catalyzer image: a magic number, the kernel snapshot (versioned on its
/// own), and what a restore needs to know about the memory image without opening its config.
public struct CheckpointState: Sendable {
    static let magic = Array("CATZSTAT".utf8)

    public var kernel: KernelSnapshot
    /// The image's chunk size, so a failed page read can be reported by chunk.
    public var chunkSize: Int

    public init(kernel: KernelSnapshot, chunkSize: Int) {
        self.kernel = kernel
        self.chunkSize = chunkSize
    }

    public func encoded() -> [UInt8] {
        var writer = SnapshotWriter()
        for byte in Self.magic { writer.write(byte) }
        kernel.encode(into: &writer)
        writer.write(UInt64(chunkSize))
        return writer.bytes
    }

    /// Decodes a state blob; `image` names it in errors.
    public init(decoding bytes: [UInt8], image: String) throws(RuntimeError) {
        guard bytes.starts(with: Self.magic) else {
            throw RuntimeError("image '\(image)': its state blob is not catalyzer checkpoint state (no CATZSTAT header); the image was not made by `catalyzer checkpoint`, or its state is damaged: re-create it")
        }
        var reader = SnapshotReader(Array(bytes.dropFirst(Self.magic.count)))
        do throws(SnapshotDecodingError) {
            kernel = try KernelSnapshot(from: &reader)
            let size = try reader.read(UInt64.self, "chunk size")
            // It sizes the buffer a failed page read is diagnosed with: only real chunk sizes.
            guard size <= UInt64(ChunkSize.maximum), ChunkSize.isValid(Int(size)) else {
                throw reader.failure("chunk size \(size) is not a power of two between \(ChunkSize.minimum) and \(ChunkSize.maximum)")
            }
            chunkSize = Int(size)
            guard reader.isAtEnd else { throw reader.failure("unexpected bytes after the state") }
        } catch {
            throw RuntimeError("image '\(image)': its state blob does not parse: \(error); re-create the image with `catalyzer checkpoint`")
        }
    }
}

extension CheckpointState {
    /// What a restore would object to in an image's state, checked without restoring: that an
    /// image with a state holds checkpoint state that decodes, and that it agrees with the
    /// image's memory (size, whole pages, chunk size). `catalyzer image verify` runs this on
    /// every image; an image with no state is a plain memory image and has nothing to check.
    public static func verificationProblems(image: String, config: ImageConfig, state bytes: [UInt8]) -> [String] {
        guard !bytes.isEmpty else { return [] }
        var problems: [String] = []
        let pageSize = Int64(GuestMemory.pageSize)
        if config.memorySize % pageSize != 0 {
            problems.append("image '\(image)': its memory is \(config.memorySize) bytes, not a whole number of \(pageSize)-byte pages, so it cannot be restored as guest memory; the image is damaged: re-create it with `catalyzer checkpoint`")
        }
        do {
            let state = try CheckpointState(decoding: bytes, image: image)
            if Int64(state.kernel.memorySize) != config.memorySize {
                problems.append("image '\(image)': its state is for \(state.kernel.memorySize) bytes of memory but its memory is \(config.memorySize) bytes; the image is inconsistent: re-create it with `catalyzer checkpoint`")
            }
            if state.chunkSize != config.chunkSize {
                problems.append("image '\(image)': its state records chunks of \(state.chunkSize) bytes but its memory is stored in chunks of \(config.chunkSize); the image is inconsistent: re-create it with `catalyzer checkpoint`")
            }
        } catch {
            problems.append(error.description)
        }
        return problems
    }
}

/// A checkpoint, restore or invocation failure, with a message that says what, where and what to do.
public struct RuntimeError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
