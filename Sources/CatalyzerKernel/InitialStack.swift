import CKVM
import Glibc

/// Builds the stack a Linux program starts with: argc, argv, envp and the auxiliary vector, with the
/// strings and AT_RANDOM bytes above them, as `fs/binfmt_elf.c` lays it out.
struct InitialStack {
    enum AuxiliaryType: UInt64 {
        case null = 0, phdr = 3, phent = 4, phnum = 5, pagesz = 6, base = 7, flags = 8, entry = 9
        case uid = 11, euid = 12, gid = 13, egid = 14, platform = 15, hwcap = 16, clktck = 17
        case secure = 23, random = 25, hwcap2 = 26, execfn = 31, sysinfoELFHeader = 33
    }

    let arguments: [String]
    let environment: [String]
    let executablePath: String
    let program: ELFLoader.LoadedProgram
    /// Address of the vDSO image (AT_SYSINFO_EHDR).
    let vdso: UInt64
    let credentials: Credentials

    /// Writes the stack below `top` and returns the initial RSP (pointing at argc, 16-byte aligned).
    func build(in space: AddressSpace, top: UInt64) throws(Errno) -> UInt64 {
        var cursor = top
        func push(_ bytes: [UInt8]) throws(Errno) -> UInt64 {
            cursor -= UInt64(bytes.count)
            try space.write(bytes, to: cursor)
            return cursor
        }
        func pushString(_ string: String) throws(Errno) -> UInt64 { try push(Array(string.utf8) + [0]) }

        let execfn = try pushString(executablePath)
        let environmentPointers = try environment.map { (value) throws(Errno) -> UInt64 in try pushString(value) }
        let argumentPointers = try arguments.map { (value) throws(Errno) -> UInt64 in try pushString(value) }
        let platform = try pushString("x86_64")
        var randomBytes = [UInt8](repeating: 0, count: 16)
        _ = randomBytes.withUnsafeMutableBytes { chost_getrandom($0.baseAddress, 16, 0) }
        cursor &= ~15
        let random = try push(randomBytes)

        let auxiliary: [(AuxiliaryType, UInt64)] = [
            (.phdr, program.programHeaders), (.phent, 56), (.phnum, UInt64(program.programHeaderCount)),
            (.pagesz, Page.size), (.base, program.interpreterBase), (.flags, 0), (.entry, program.programEntry),
            (.uid, UInt64(credentials.uid)), (.euid, UInt64(credentials.effectiveUID)),
            (.gid, UInt64(credentials.gid)), (.egid, UInt64(credentials.effectiveGID)), (.secure, 0),
            (.random, random), (.execfn, execfn), (.platform, platform),
            (.hwcap, Self.hardwareCapabilities()), (.hwcap2, 0), (.clktck, 100), (.sysinfoELFHeader, vdso), (.null, 0),
        ]
        var words: [UInt64] = [UInt64(arguments.count)] + argumentPointers + [0] + environmentPointers + [0]
        for (type, value) in auxiliary { words += [type.rawValue, value] }
        cursor -= UInt64(words.count * 8)
        cursor &= ~15
        try space.write(words.flatMap { word in (0..<8).map { UInt8(truncatingIfNeeded: word >> (8 * $0)) } }, to: cursor)
        return cursor
    }

    /// AT_HWCAP on x86-64 is CPUID.1:EDX.
    private static func hardwareCapabilities() -> UInt64 {
        var eax: UInt32 = 1, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0
        chost_cpuid(&eax, &ebx, &ecx, &edx)
        return UInt64(edx)
    }
}
