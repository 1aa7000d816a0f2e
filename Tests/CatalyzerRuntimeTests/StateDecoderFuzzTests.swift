import CatalyzerImage
import CatalyzerKVM
import Foundation
import Testing
@testable import CatalyzerKernel
@testable import CatalyzerRuntime

/// Seeded mutation fuzzing of the state decoder (`CheckpointState(decoding:)`, which runs
/// `KernelSnapshot(from:)`): a state blob is hostile input, so every mutation either decodes to
/// something restore code can index without checks, or is refused with an error. No KVM
/// needed: the seed is a synthetic snapshot with every kind of part. Inputs that once trapped
/// are kept below as plain tests.
@Suite struct StateDecoderFuzzTests {
    static let iterations = 40_000
    static let budgetSeconds = 8.0

    /// xorshift: the same seed replays the same inputs.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
        mutating func next() -> UInt64 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return state
        }
    }

    /// A snapshot with one of everything: threads, MSRs, regions, each kind of open file, a
    /// pipe, a /tmp tree with a file, a directory and a symlink, zombies and a rootfs entry.
    static func seedSnapshot() -> KernelSnapshot {
        let registers = [UInt8](repeating: 0x11, count: VCPUState.registersSize)
        let xsave = [UInt8](repeating: 0, count: VCPUState.xsaveAreaSize)
        let task = KernelSnapshot.TaskState(
            tid: 1, name: "main", registers: registers, fsBase: 0x7000_0000, gsBase: 0, xsaveArea: xsave,
            signalMask: 0, savedSignalMask: nil, pendingSignals: 0, alternateStack: (0, 0, 2), clearChildTID: 0,
            robustList: 0, pendingSyscall: true, remainingNanoseconds: 5)
        var second = task
        second.tid = 2
        second.savedSignalMask = 4
        var link = KernelSnapshot.TmpNode(inode: 4, mode: 0o120777, modifiedSeconds: 1, modifiedNanoseconds: 2, data: nil, children: [])
        link.symlinkTarget = "/tmp/f"
        return KernelSnapshot(
            memorySize: 1 << 20,
            vcpu: VCPUState(registers: registers, specialRegisters: [UInt8](repeating: 0, count: VCPUState.specialRegistersSize),
                            xsaveArea: xsave, xcr0: 7, modelSpecificRegisters: [.init(index: 0xC000_0080, value: 0x500)]),
            pageTableRoot: 0x8000,
            allocator: .init(start: 0x10000, nextUnused: 0x40000, freed: [0x20000, 0x21000]),
            regions: [.init(start: 0x40_0000, end: 0x40_2000, protection: 5, name: "/bin/fn"),
                      .init(start: 0x7fff_0000, end: 0x7fff_8000, protection: 3, name: "[stack]")],
            breakStart: 0x50_0000, breakEnd: 0x50_1000, clockPage: 0x7ff0_0000, clockFrame: 0x30000,
            checkpointMonotonic: 12345,
            process: .init(pid: 1, executablePath: "/bin/fn", workingDirectory: "/", uid: 0, gid: 0,
                           signalActions: [.init(signal: 2, action: [UInt8](repeating: 1, count: 32))],
                           fileCreationMask: 0o22, nextPID: 3, zombies: [.init(pid: 2, parent: 1, status: 0)]),
            tasks: [task, second],
            files: [.init(kind: .standardStream(0), guestPath: "pipe:[0]", statusFlags: 0),
                    .init(kind: .rootfs(path: "/etc/conf", offset: 10), guestPath: "/etc/conf", statusFlags: 0),
                    .init(kind: .hostDevice(path: "/dev/urandom"), guestPath: "/dev/urandom", statusFlags: 0),
                    .init(kind: .tmp(inode: 3, position: 2), guestPath: "/tmp/f", statusFlags: 2),
                    .init(kind: .pipe(index: 0), guestPath: "pipe:[1]", statusFlags: 1)],
            descriptors: (0..<5).map { .init(fd: Int32($0), file: $0, closeOnExec: $0 > 2) },
            pipes: [.init(buffered: [1, 2, 3], hasReader: true, hasWriter: true)],
            tmp: .init(capacity: 1 << 20, nextInode: 10, nodes: [
                .init(inode: 1, mode: 0o41777, modifiedSeconds: 1, modifiedNanoseconds: 0, data: nil, children: [("f", 3), ("l", 4)]),
                .init(inode: 2, mode: 0o41777, modifiedSeconds: 1, modifiedNanoseconds: 0, data: nil, children: []),
                .init(inode: 3, mode: 0o100644, modifiedSeconds: 1, modifiedNanoseconds: 0, data: Array("hello".utf8), children: []),
                link,
            ]),
            rootfs: RootfsFingerprint(path: "/nonexistent-rootfs", entries: [
                .init(path: "/etc/conf", noFollow: false, mode: 0o100644, size: 20, modifiedSeconds: 1, modifiedNanoseconds: 2),
            ]))
    }

    static func seedBlob() -> [UInt8] { CheckpointState(kernel: seedSnapshot(), chunkSize: 65536).encoded() }

    /// The values at the edges of every range the decoder checks.
    static let interesting: [UInt64] = [0, 1, 4095, 4096, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 32, 1 << 40, 1 << 60, 1 << 62,
                                        UInt64(Int.max), 1 << 63, UInt64.max, UInt64.max - 1]

    /// What restore code indexes without checking; true for every blob the decoder accepts.
    static func expectRestorable(_ state: CheckpointState, sourceLocation: SourceLocation = #_sourceLocation) {
        let kernel = state.kernel
        #expect(kernel.memorySize > 0 && kernel.memorySize % GuestMemory.pageSize == 0, sourceLocation: sourceLocation)
        #expect(kernel.pageTableRoot % 4096 == 0 && kernel.pageTableRoot < UInt64(kernel.memorySize), sourceLocation: sourceLocation)
        #expect(ChunkSize.isValid(state.chunkSize), sourceLocation: sourceLocation)
        #expect(!kernel.tasks.isEmpty, sourceLocation: sourceLocation)
        for descriptor in kernel.descriptors { #expect(descriptor.file >= 0 && descriptor.file < kernel.files.count, sourceLocation: sourceLocation) }
        for file in kernel.files {
            switch file.kind {
            case .pipe(let index): #expect(index >= 0 && index < kernel.pipes.count, sourceLocation: sourceLocation)
            case .hostDevice(let path): #expect(Filesystem.passedThroughDevices.contains(path), sourceLocation: sourceLocation)
            case .tmp(_, let position): #expect(position >= 0, sourceLocation: sourceLocation)
            default: break
            }
        }
        #expect(kernel.tmp.capacity >= 0 && kernel.tmp.nodes.contains { $0.inode == 1 }, sourceLocation: sourceLocation)
    }

    @Test("state decoder: mutated blobs decode to restorable state or are refused with an error")
    func fuzzStateDecoder() throws {
        let seed = Self.seedBlob()
        Self.expectRestorable(try CheckpointState(decoding: seed, image: "seed"))
        var generator = Generator(seed: 0x57A7E)
        let started = Date()
        var accepted = 0, refused = 0
        for _ in 0..<Self.iterations {
            if Date().timeIntervalSince(started) > Self.budgetSeconds { break }
            var blob = seed
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                guard blob.count > 9 else { break }
                // Past the magic; half the time in the header, where the sizes and counts are dense.
                let at = Int.random(in: 8..<(Bool.random(using: &generator) ? min(blob.count, 64) : blob.count), using: &generator)
                switch Int.random(in: 0..<5, using: &generator) {
                case 0:
                    blob[at] ^= UInt8.random(in: 1...255, using: &generator)
                case 1, 2:
                    // An interesting number over whatever field starts here (sizes, counts, indices).
                    let value = Self.interesting.randomElement(using: &generator)!
                    let width = [1, 2, 4, 8].randomElement(using: &generator)!
                    for byte in 0..<width where at + byte < blob.count { blob[at + byte] = UInt8(truncatingIfNeeded: value >> (8 * byte)) }
                case 3:
                    blob.removeSubrange(at...)
                default:
                    blob.insert(contentsOf: blob[at..<min(blob.count, at + Int.random(in: 1...32, using: &generator))], at: at)
                }
            }
            do {
                Self.expectRestorable(try CheckpointState(decoding: blob, image: "fuzz"))
                accepted += 1
            } catch {
                #expect(error.description.hasPrefix("image 'fuzz': its state blob"), "\(error)")
                refused += 1
            }
        }
        #expect(accepted > 0 && refused > 0, "accepted \(accepted), refused \(refused)")
    }

    // MARK: Inputs that trapped before, kept as tests

    /// The seed blob with the 8 bytes at `offset` replaced by `value` (little-endian).
    static func blob(_ value: UInt64, at offset: Int) -> [UInt8] {
        var bytes = seedBlob()
        for byte in 0..<8 { bytes[offset + byte] = UInt8(truncatingIfNeeded: value >> (8 * byte)) }
        return bytes
    }

    static func expectRefused(_ bytes: [UInt8], saying fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try CheckpointState(decoding: bytes, image: "crafted")
            Issue.record("accepted a crafted state", sourceLocation: sourceLocation)
        } catch {
            #expect(error.description.contains(fragment), "\(error)", sourceLocation: sourceLocation)
            #expect(error.description.contains("image 'crafted'") && error.description.contains("re-create"), "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("crash inputs: numbers beyond Int, foreign host devices and odd page-table roots are refused")
    func craftedStateNumbers() throws {
        // Magic (8 bytes) and version (4), then the memory size: UInt64.max trapped converting to Int.
        Self.expectRefused(Self.blob(UInt64.max, at: 12), saying: "memory size 18446744073709551615 is out of range")
        Self.expectRefused(Self.blob(1 << 63, at: 12), saying: "memory size 9223372036854775808 is out of range")
        // The chunk size is the last field.
        let seed = Self.seedBlob()
        Self.expectRefused(Self.blob(UInt64.max, at: seed.count - 8), saying: "chunk size 18446744073709551615 is not a power of two")
        Self.expectRefused(Self.blob(1 << 40, at: seed.count - 8), saying: "is not a power of two")

        var snapshot = Self.seedSnapshot()
        snapshot.files[2].kind = .hostDevice(path: "/dev/kvm")
        Self.expectRefused(CheckpointState(kernel: snapshot, chunkSize: 65536).encoded(), saying: "host device /dev/kvm")
        snapshot = Self.seedSnapshot()
        snapshot.files[4].kind = .pipe(index: Int.max)
        Self.expectRefused(CheckpointState(kernel: snapshot, chunkSize: 65536).encoded(), saying: "refers to pipe")
        snapshot = Self.seedSnapshot()
        snapshot.descriptors[0].file = Int.max
        Self.expectRefused(CheckpointState(kernel: snapshot, chunkSize: 65536).encoded(), saying: "refers to open file")
        snapshot = Self.seedSnapshot()
        snapshot.pageTableRoot = 0x8001
        Self.expectRefused(CheckpointState(kernel: snapshot, chunkSize: 65536).encoded(), saying: "physical memory bookkeeping")
        snapshot = Self.seedSnapshot()
        snapshot.files[3].kind = .tmp(inode: 3, position: -1)
        Self.expectRefused(CheckpointState(kernel: snapshot, chunkSize: 65536).encoded(), saying: "position -1")
    }

    @Test("image verify's state check: decodes, and compares with the config")
    func verificationProblems() throws {
        let state = Descriptor(mediaType: MediaType.state, digest: Digest(of: []), size: 0)
        func config(memory: Int64, chunk: Int = 65536) -> ImageConfig {
            ImageConfig(memorySize: memory, chunkSize: chunk, codec: .zstd, compressionLevel: nil, chunks: [], state: state,
                        created: "", creator: "")
        }
        let blob = Self.seedBlob()
        #expect(CheckpointState.verificationProblems(image: "f", config: config(memory: 1 << 20), state: blob).isEmpty)
        #expect(CheckpointState.verificationProblems(image: "f", config: config(memory: 5), state: []).isEmpty, "a plain memory image")
        let unaligned = CheckpointState.verificationProblems(image: "f", config: config(memory: (1 << 20) + 100), state: blob)
        #expect(unaligned.contains { $0.contains("not a whole number of 4096-byte pages") }, "\(unaligned)")
        #expect(unaligned.contains { $0.contains("state is for 1048576 bytes of memory") }, "\(unaligned)")
        let chunks = CheckpointState.verificationProblems(image: "f", config: config(memory: 1 << 20, chunk: 4096), state: blob)
        #expect(chunks.contains { $0.contains("chunks of 65536 bytes") }, "\(chunks)")
        let truncated = CheckpointState.verificationProblems(image: "f", config: config(memory: 1 << 20), state: Array(blob.prefix(blob.count / 2)))
        #expect(truncated.contains { $0.contains("state blob does not parse") }, "\(truncated)")
        let foreign = CheckpointState.verificationProblems(image: "f", config: config(memory: 1 << 20), state: Array("state of f".utf8))
        #expect(foreign.contains { $0.contains("not catalyzer checkpoint state") }, "\(foreign)")
    }
}
