/// The sandbox's vDSO: a one-page ELF shared object the monitor maps into every process and names
/// in `AT_SYSINFO_EHDR`, so glibc calls its `__vdso_clock_gettime` instead of trapping. Each
/// trapped syscall is a VM exit (tens of µs here) and python reads the monotonic clock hundreds of
/// times while importing, so answering clocks in guest user mode is a large part of a cold start.
///
/// The function reads the time-stamp counter and converts it with the data the monitor keeps in the
/// page after the image (`[vvar]`, see `GuestClock`); for other clocks, or before the monitor has
/// filled the data, it makes the real syscall. Layout (linked at 0, loaded at `base`):
///
///     0x000 ELF header   0x040 PT_LOAD, PT_DYNAMIC   0x200 dynamic section   0x300 DT_HASH
///     0x380 strings      0x400 symbols               0x800 code              0x1000 [vvar]
enum VirtualDSO {
    static let imageSize: UInt64 = 0x1000
    /// The `[vvar]` page's offset from the image; the code addresses it RIP-relative.
    static let clockDataOffset: UInt64 = 0x1000
    /// The region name of the clock data page; only `map` creates regions with it.
    static let clockDataName = "[vvar]"
    private static let dynamicOffset = 0x200, hashOffset = 0x300, stringsOffset = 0x380, symbolsOffset = 0x400
    private static let codeOffset = 0x800

    /// `__vdso_clock_gettime(clockid_t clock, struct timespec *ts)`, assembled from:
    ///
    ///         cmp edi, 1; je monotonic            ; CLOCK_MONOTONIC
    ///         test edi, edi; jne syscall          ; CLOCK_REALTIME, else the real syscall
    ///         mov r8d, 24; jmp convert            ; GuestClock.realtimeBase
    ///     monotonic: mov r8d, 16                  ; GuestClock.monotonicBase
    ///     convert:
    ///         lea r9, [rip + vvar]                ; the page at image + 0x1000
    ///         cmp qword [r9 + 32], 0; je syscall  ; not filled in yet
    ///         rdtsc; shl rdx, 32; or rax, rdx
    ///         sub rax, [r9]; jns 1f; xor eax, eax ; ticks since the base (never negative)
    ///     1:  mul qword [r9 + 8]; shrd rax, rdx, 32 ; × ns per tick (32.32 fixed point)
    ///         add rax, [r9 + r8]
    ///         xor edx, edx; mov ecx, 1000000000; div rcx
    ///         mov [rsi], rax; mov [rsi + 8], rdx; xor eax, eax; ret
    ///     syscall: mov eax, 228; syscall; ret
    private static let clockGettimeCode: [UInt8] = [
        0x83, 0xFF, 0x01, 0x74, 0x0C, 0x85, 0xFF, 0x75, 0x4D, 0x41, 0xB8, 0x18, 0x00, 0x00, 0x00, 0xEB,
        0x06, 0x41, 0xB8, 0x10, 0x00, 0x00, 0x00, 0x4C, 0x8D, 0x0D, 0xE2, 0x07, 0x00, 0x00, 0x49, 0x83,
        0x79, 0x20, 0x00, 0x74, 0x31, 0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0, 0x49, 0x2B,
        0x01, 0x79, 0x02, 0x31, 0xC0, 0x49, 0xF7, 0x61, 0x08, 0x48, 0x0F, 0xAC, 0xD0, 0x20, 0x4B, 0x03,
        0x04, 0x01, 0x31, 0xD2, 0xB9, 0x00, 0xCA, 0x9A, 0x3B, 0x48, 0xF7, 0xF1, 0x48, 0x89, 0x06, 0x48,
        0x89, 0x56, 0x08, 0x31, 0xC0, 0xC3, 0xB8, 0xE4, 0x00, 0x00, 0x00, 0x0F, 0x05, 0xC3,
    ]

    /// The image bytes, built once.
    static let image: [UInt8] = {
        var bytes = [UInt8](repeating: 0, count: Int(imageSize))
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<offset + $0.count, with: $0) }
        }
        let strings: [UInt8] = [0] + Array("__vdso_clock_gettime".utf8) + [0]
        let dynamic: [(tag: UInt64, value: UInt64)] = [
            (4, UInt64(hashOffset)), (5, UInt64(stringsOffset)), (6, UInt64(symbolsOffset)),
            (10, UInt64(strings.count)), (11, 24), (0, 0),  // DT_HASH STRTAB SYMTAB STRSZ SYMENT NULL
        ]
        // ELF header: ELF64, little-endian, ET_DYN, EM_X86_64, two program headers, no sections.
        bytes.replaceSubrange(0..<8, with: [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0])
        put(UInt16(3), 16); put(UInt16(62), 18); put(UInt32(1), 20)
        put(UInt64(64), 32); put(UInt16(64), 52); put(UInt16(56), 54); put(UInt16(2), 56); put(UInt16(64), 58)
        // PT_LOAD (R+X) of the whole image, then PT_DYNAMIC (read-only: glibc relocates its pointers on use).
        for (index, header) in [(type: UInt32(1), flags: UInt32(5), offset: 0, size: Int(imageSize), align: UInt64(imageSize)),
                                (type: UInt32(2), flags: UInt32(4), offset: dynamicOffset, size: dynamic.count * 16, align: UInt64(8))].enumerated() {
            let at = 64 + index * 56
            put(header.type, at); put(header.flags, at + 4)
            put(UInt64(header.offset), at + 8); put(UInt64(header.offset), at + 16); put(UInt64(header.offset), at + 24)
            put(UInt64(header.size), at + 32); put(UInt64(header.size), at + 40); put(header.align, at + 48)
        }
        for (index, entry) in dynamic.enumerated() {
            put(entry.tag, dynamicOffset + index * 16)
            put(entry.value, dynamicOffset + index * 16 + 8)
        }
        // One hash bucket holding symbol 1; symbol 0 is the reserved null symbol.
        put(UInt32(1), hashOffset); put(UInt32(2), hashOffset + 4)
        put(UInt32(1), hashOffset + 8); put(UInt32(0), hashOffset + 12); put(UInt32(0), hashOffset + 16)
        bytes.replaceSubrange(stringsOffset..<stringsOffset + strings.count, with: strings)
        let symbol = symbolsOffset + 24
        put(UInt32(1), symbol)                              // st_name
        bytes[symbol + 4] = 0x12                            // STB_GLOBAL, STT_FUNC
        put(UInt16(1), symbol + 6)                          // defined (any section but UNDEF/ABS)
        put(UInt64(codeOffset), symbol + 8)                 // st_value
        put(UInt64(clockGettimeCode.count), symbol + 16)    // st_size
        bytes.replaceSubrange(codeOffset..<codeOffset + clockGettimeCode.count, with: clockGettimeCode)
        return bytes
    }()

    /// Maps the image (`[vdso]`, read+execute) and the clock data page after it (`[vvar]`,
    /// read-only) at a free range below the mmap area; returns the image's address.
    static func map(into space: AddressSpace) throws(Errno) -> UInt64 {
        guard let base = space.findFree(length: imageSize + Page.size) else { throw Errno.ENOMEM }
        try space.map(base, base + imageSize, protection: [.read, .execute], name: "[vdso]")
        try space.map(base + clockDataOffset, base + clockDataOffset + Page.size, protection: .read, name: clockDataName)
        try space.write(image, to: base, access: .loader)
        return base
    }
}
