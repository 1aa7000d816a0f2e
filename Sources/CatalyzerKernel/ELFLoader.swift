import CatalyzerKVM
import Glibc

/// Loads ELF64 x86-64 programs into an address space as Linux's `binfmt_elf` does: an `ET_EXEC`
/// at its link addresses, an `ET_DYN` (PIE or static-pie) at `pieBase`, and for a dynamic program
/// (`PT_INTERP`) its interpreter, `ld-linux-x86-64.so.2` from the rootfs, at a free range below
/// the mmap area. The program starts at the interpreter's entry, which finds the program through
/// `AT_PHDR`/`AT_ENTRY` and itself through `AT_BASE`.
enum ELFLoader {
    /// Where a position-independent executable is placed (Linux's non-randomized ELF_ET_DYN_BASE).
    static let pieBase: UInt64 = 0x5555_5555_4000

    struct LoadedProgram {
        /// Where execution starts: the interpreter's entry for a dynamic program, else the program's.
        let entry: UInt64
        /// The program's own entry point (AT_ENTRY).
        let programEntry: UInt64
        /// Address of the program headers in guest memory (AT_PHDR).
        let programHeaders: UInt64
        let programHeaderCount: Int
        /// First byte after the program's highest segment: where the heap (brk) starts.
        let end: UInt64
        /// Load address of the interpreter (AT_BASE), 0 for a static program.
        let interpreterBase: UInt64
    }

    private struct ProgramHeader {
        let type: UInt32, flags: UInt32
        let offset: UInt64, virtualAddress: UInt64, fileSize: UInt64, memorySize: UInt64
    }

    /// The parts of an ELF file the loader needs, read from its headers.
    private struct ELFFile {
        let isPositionIndependent: Bool
        let entry: UInt64
        let programHeaderOffset: UInt64
        let headers: [ProgramHeader]
        let interpreterPath: String?

        var loadSegments: [ProgramHeader] { headers.filter { $0.type == load && $0.memorySize > 0 } }
    }

    private static let load: UInt32 = 1, interpreter: UInt32 = 3, phdr: UInt32 = 6

    /// Loads the executable read from host `fd` and, if it names one, its interpreter, opened with
    /// `openInterpreter` (a rootfs path to a host fd the loader closes).
    static func load(fd: Int32, path: String, into space: AddressSpace,
                     openInterpreter: (String) throws(Errno) -> Int32) throws(Errno) -> LoadedProgram {
        let program = try parse(fd: fd)
        let bias = program.isPositionIndependent ? pieBase : 0
        let end = try mapSegments(of: program, fd: fd, bias: bias, path: path, into: space)
        let programHeaders = Self.programHeaderAddress(program, bias: bias)
        guard let interpreterPath = program.interpreterPath else {
            return LoadedProgram(entry: program.entry &+ bias, programEntry: program.entry &+ bias,
                                 programHeaders: programHeaders, programHeaderCount: program.headers.count,
                                 end: end, interpreterBase: 0)
        }
        let interpreterFD = try openInterpreter(interpreterPath)
        defer { close(interpreterFD) }
        let interpreterFile = try parse(fd: interpreterFD)
        // The interpreter must be a self-relocating shared object that needs no interpreter itself.
        guard interpreterFile.isPositionIndependent, interpreterFile.interpreterPath == nil else { throw Errno.ELIBBAD }
        let segments = interpreterFile.loadSegments
        guard segments.allSatisfy({ $0.virtualAddress < SystemLayout.userLimit && $0.memorySize < SystemLayout.userLimit }),
              let lowest = segments.map({ Page.down($0.virtualAddress) }).min(),
              let highest = segments.compactMap({ Page.up($0.virtualAddress + $0.memorySize) }).max(),
              highest > lowest, let base = space.findFree(length: highest - lowest) else { throw Errno.ELIBBAD }
        // Wrapping arithmetic: the bias is an offset modulo 2^64 when the interpreter is linked high.
        let interpreterBias = base &- lowest
        _ = try mapSegments(of: interpreterFile, fd: interpreterFD, bias: interpreterBias, path: interpreterPath, into: space)
        return LoadedProgram(entry: interpreterFile.entry &+ interpreterBias, programEntry: program.entry &+ bias,
                             programHeaders: programHeaders, programHeaderCount: program.headers.count,
                             end: end, interpreterBase: interpreterBias)
    }

    private static func parse(fd: Int32) throws(Errno) -> ELFFile {
        let header = try readBytes(fd: fd, offset: 0, count: 64)
        guard header.count == 64, header[0..<4] == [0x7F, 0x45, 0x4C, 0x46], header[4] == 2, header[5] == 1 else {
            throw Errno.ENOEXEC  // not a little-endian ELF64
        }
        func u16(_ at: Int) -> UInt16 { UInt16(header[at]) | UInt16(header[at + 1]) << 8 }
        func u64(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(header[at + $1]) << (8 * UInt64($1)) } }
        let type = u16(16), machine = u16(18)
        guard machine == 62, type == 2 || type == 3 else { throw Errno.ENOEXEC }  // EM_X86_64, ET_EXEC/ET_DYN
        let phoff = u64(32)
        let phentsize = Int(u16(54)), phnum = Int(u16(56))
        guard phentsize == 56, phnum > 0, phnum < 256 else { throw Errno.ENOEXEC }
        let table = try readBytes(fd: fd, offset: phoff, count: phentsize * phnum)
        guard table.count == phentsize * phnum else { throw Errno.ENOEXEC }
        let headers = (0..<phnum).map { index -> ProgramHeader in
            let base = index * phentsize
            func h32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(table[base + at + $1]) << (8 * UInt32($1)) } }
            func h64(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(table[base + at + $1]) << (8 * UInt64($1)) } }
            return ProgramHeader(type: h32(0), flags: h32(4), offset: h64(8), virtualAddress: h64(16),
                                 fileSize: h64(32), memorySize: h64(40))
        }
        var interpreterPath: String?
        if let segment = headers.first(where: { $0.type == interpreter }) {
            guard segment.fileSize > 1, segment.fileSize <= 4096 else { throw Errno.ENOEXEC }
            let bytes = try readBytes(fd: fd, offset: segment.offset, count: Int(segment.fileSize))
            guard bytes.count == Int(segment.fileSize), bytes.last == 0 else { throw Errno.ENOEXEC }
            interpreterPath = String(decoding: bytes.dropLast(), as: UTF8.self)
        }
        return ELFFile(isPositionIndependent: type == 3, entry: u64(24), programHeaderOffset: phoff,
                       headers: headers, interpreterPath: interpreterPath)
    }

    /// Maps the `PT_LOAD` segments at `bias`, copies their file bytes and zeroes their bss; returns
    /// the first page after the highest one.
    private static func mapSegments(of file: ELFFile, fd: Int32, bias: UInt64, path: String,
                                    into space: AddressSpace) throws(Errno) -> UInt64 {
        var end: UInt64 = 0
        for segment in file.loadSegments {
            let segmentStart = segment.virtualAddress &+ bias
            // Both below 2^47, so their sum cannot overflow; `space.map` checks the range itself.
            guard segment.fileSize <= segment.memorySize, segment.memorySize < SystemLayout.userLimit,
                  segmentStart < SystemLayout.userLimit,
                  let segmentEnd = Page.up(segmentStart + segment.memorySize) else { throw Errno.ENOEXEC }
            var protection: Protection = []
            if segment.flags & 4 != 0 { protection.insert(.read) }
            if segment.flags & 2 != 0 { protection.insert(.write) }
            if segment.flags & 1 != 0 { protection.insert(.execute) }
            // Segments may share a boundary page with the previous one; map only the new part.
            let mapStart = max(Page.down(segmentStart), end)
            if mapStart < segmentEnd {
                try space.map(mapStart, segmentEnd, protection: protection, name: path)
            }
            var offset = segment.offset
            for buffer in try space.hostBuffers(segmentStart, length: Int(segment.fileSize), access: .loader) {
                guard pread(fd, buffer.baseAddress, buffer.count, off_t(truncatingIfNeeded: offset)) == buffer.count else { throw Errno.ENOEXEC }
                offset &+= UInt64(buffer.count)
            }
            let bssLength = Int(segment.memorySize - segment.fileSize)
            for buffer in try space.hostBuffers(segmentStart + segment.fileSize, length: bssLength, access: .loader) {
                buffer.initializeMemory(as: UInt8.self, repeating: 0)
            }
            end = max(end, segmentEnd)
        }
        guard end > 0 else { throw Errno.ENOEXEC }
        return end
    }

    /// AT_PHDR: the `PT_PHDR` segment, or where the load segment covering the table maps it.
    private static func programHeaderAddress(_ file: ELFFile, bias: UInt64) -> UInt64 {
        let phoff = file.programHeaderOffset
        if let segment = file.headers.first(where: { $0.type == phdr }) { return segment.virtualAddress &+ bias }
        if let segment = file.headers.first(where: { $0.type == load && $0.offset <= phoff && phoff - $0.offset < $0.fileSize }) {
            return segment.virtualAddress &+ bias &+ (phoff - segment.offset)
        }
        return 0
    }

    private static func readBytes(fd: Int32, offset: UInt64, count: Int) throws(Errno) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(truncatingIfNeeded: offset)) }
        guard got >= 0 else { throw Errno.lastHostError }
        return Array(bytes.prefix(got))
    }
}
