import Glibc

/// Loads a static ELF64 x86-64 executable (`ET_EXEC`, or `ET_DYN` without an interpreter, i.e.
/// static-pie) into an address space. Dynamic executables (`PT_INTERP`) are refused with ENOEXEC.
struct ELFLoader {
    /// Where a static-pie executable is placed (Linux's non-randomized ELF_ET_DYN_BASE for x86-64).
    static let pieBase: UInt64 = 0x5555_5555_4000

    struct LoadedProgram {
        let entry: UInt64
        /// Address of the program headers in guest memory (AT_PHDR).
        let programHeaders: UInt64
        let programHeaderCount: Int
        /// First byte after the highest segment: where the heap (brk) starts.
        let end: UInt64
    }

    private struct ProgramHeader {
        let type: UInt32, flags: UInt32
        let offset: UInt64, virtualAddress: UInt64, fileSize: UInt64, memorySize: UInt64
    }

    private static let load: UInt32 = 1, interpreter: UInt32 = 3, phdr: UInt32 = 6

    /// Reads the executable from host `fd` and maps its segments.
    static func load(fd: Int32, path: String, into space: AddressSpace) throws(Errno) -> LoadedProgram {
        let header = try readBytes(fd: fd, offset: 0, count: 64)
        guard header.count == 64, header[0..<4] == [0x7F, 0x45, 0x4C, 0x46], header[4] == 2, header[5] == 1 else {
            throw Errno.ENOEXEC  // not a little-endian ELF64
        }
        func u16(_ at: Int) -> UInt16 { UInt16(header[at]) | UInt16(header[at + 1]) << 8 }
        func u64(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(header[at + $1]) << (8 * UInt64($1)) } }
        let type = u16(16), machine = u16(18)
        guard machine == 62, type == 2 || type == 3 else { throw Errno.ENOEXEC }  // EM_X86_64, ET_EXEC/ET_DYN
        let entry = u64(24), phoff = u64(32)
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
        guard !headers.contains(where: { $0.type == interpreter }) else { throw Errno.ENOEXEC }
        let bias = type == 3 ? pieBase : 0
        var end: UInt64 = 0
        for segment in headers where segment.type == load && segment.memorySize > 0 {
            let start = Page.down(segment.virtualAddress + bias)
            guard let segmentEnd = Page.up(segment.virtualAddress + bias + segment.memorySize) else { throw Errno.ENOEXEC }
            var protection: Protection = []
            if segment.flags & 4 != 0 { protection.insert(.read) }
            if segment.flags & 2 != 0 { protection.insert(.write) }
            if segment.flags & 1 != 0 { protection.insert(.execute) }
            // Segments may share a boundary page with the previous one; map only the new part.
            let mapStart = max(start, end)
            if mapStart < segmentEnd {
                try space.map(mapStart, segmentEnd, protection: protection, name: path)
            }
            let fileBuffers = try space.hostBuffers(segment.virtualAddress + bias, length: Int(segment.fileSize), access: .loader)
            var offset = segment.offset
            for buffer in fileBuffers {
                guard pread(fd, buffer.baseAddress, buffer.count, off_t(offset)) == buffer.count else { throw Errno.ENOEXEC }
                offset += UInt64(buffer.count)
            }
            let bssStart = segment.virtualAddress + bias + segment.fileSize
            let bssLength = Int(segment.memorySize - segment.fileSize)
            for buffer in try space.hostBuffers(bssStart, length: bssLength, access: .loader) {
                buffer.initializeMemory(as: UInt8.self, repeating: 0)
            }
            end = max(end, segmentEnd)
        }
        guard end > 0 else { throw Errno.ENOEXEC }
        let programHeaders: UInt64
        if let phdrSegment = headers.first(where: { $0.type == phdr }) {
            programHeaders = phdrSegment.virtualAddress + bias
        } else if let first = headers.first(where: { $0.type == load && $0.offset <= phoff && phoff < $0.offset + $0.fileSize }) {
            programHeaders = first.virtualAddress + bias + (phoff - first.offset)
        } else {
            programHeaders = 0
        }
        return LoadedProgram(entry: entry + bias, programHeaders: programHeaders, programHeaderCount: phnum, end: end)
    }

    private static func readBytes(fd: Int32, offset: UInt64, count: Int) throws(Errno) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        guard got >= 0 else { throw Errno.lastHostError }
        return Array(bytes.prefix(got))
    }
}
