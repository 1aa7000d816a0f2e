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
    /// Where the function may connect beyond its sandbox (`checkpoint --net-allow`, `--dns`), as
    /// the texts the user gave: a restore parses them again (a host name resolves on the node
    /// that runs the function). Absent from images made before the network existed: none.
    public var networkRules: [String] = []
    public var networkResolver: String?

    public init(kernel: KernelSnapshot, chunkSize: Int, network: NetworkPolicy = .none) {
        self.kernel = kernel
        self.chunkSize = chunkSize
        networkRules = network.ruleTexts
        networkResolver = network.resolverText
    }

    /// The recorded policy, parsed (and its host names resolved) on this node.
    public func networkPolicy(image: String) throws(RuntimeError) -> NetworkPolicy {
        do throws(NetworkPolicyError) {
            return try NetworkPolicy(allowing: networkRules, resolver: networkResolver)
        } catch {
            throw RuntimeError("image '\(image)': its network policy cannot be used on this node: \(error); invoke it with --net-allow rules that apply here, or --no-network")
        }
    }

    /// The most rules a state may carry, and the longest rule: far above what anyone types.
    static let maximumNetworkRules = 1024, maximumRuleLength = 512

    public func encoded() -> [UInt8] {
        var writer = SnapshotWriter()
        for byte in Self.magic { writer.write(byte) }
        kernel.encode(into: &writer)
        writer.write(UInt64(chunkSize))
        if !networkRules.isEmpty || networkResolver != nil {
            writer.write(networkRules) { $0.write($1) }
            writer.write(networkResolver != nil)
            writer.write(networkResolver ?? "")
        }
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
            if !reader.isAtEnd {
                networkRules = try reader.readArray("network rules") { (r) throws(SnapshotDecodingError) in
                    try r.readString("network rule")
                }
                let hasResolver = try reader.readBool("network resolver present")
                let resolver = try reader.readString("network resolver")
                networkResolver = hasResolver ? resolver : nil
                guard networkRules.count <= Self.maximumNetworkRules,
                      (networkRules + [resolver]).allSatisfy({ $0.utf8.count <= Self.maximumRuleLength }) else {
                    throw reader.failure("the network policy has \(networkRules.count) rules or one longer than \(Self.maximumRuleLength) bytes")
                }
            }
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
