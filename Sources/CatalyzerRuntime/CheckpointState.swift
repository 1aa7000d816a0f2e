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
            chunkSize = Int(try reader.read(UInt64.self, "chunk size"))
            guard reader.isAtEnd else { throw reader.failure("unexpected bytes after the state") }
            guard chunkSize > 0 else { throw reader.failure("chunk size is 0") }
        } catch {
            throw RuntimeError("image '\(image)': its state blob does not parse: \(error); re-create the image with `catalyzer checkpoint`")
        }
    }
}

/// A checkpoint, restore or invocation failure, with a message that says what, where and what to do.
public struct RuntimeError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
