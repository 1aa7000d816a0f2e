/// A trapped syscall's number and its six argument registers (RDI RSI RDX R10 R8 R9).
struct SyscallArguments {
    let number: Int
    let values: [UInt64]

    subscript(_ index: Int) -> UInt64 { values[index] }
    func int32(_ index: Int) -> Int32 { Int32(truncatingIfNeeded: values[index]) }
    func uint32(_ index: Int) -> UInt32 { UInt32(truncatingIfNeeded: values[index]) }
    func signed(_ index: Int) -> Int64 { Int64(bitPattern: values[index]) }
    /// A length argument; huge values (negative as ssize_t) are invalid.
    func length(_ index: Int) throws(Errno) -> Int {
        guard values[index] <= UInt64(Int32.max) else { throw Errno.EINVAL }
        return Int(values[index])
    }
}

/// How strace shows an argument.
enum ArgumentKind {
    case int, octal, fd
    /// A pointer: NULL or hex.
    case hex
    /// A bit mask or code: hex, with 0 as "0".
    case flags
    /// A NUL-terminated guest string (a path), shown before the call.
    case path
    /// Bytes the program passes in; the length is the argument at the given index.
    case inBuffer(lengthArgument: Int)
    /// Bytes the kernel fills in; shown after the call, with the result as their length.
    case outBuffer
}

/// One entry of the syscall table.
struct SyscallDefinition {
    let name: String
    let arguments: [ArgumentKind]
    let handler: (Kernel, SyscallArguments) throws(Errno) -> UInt64
}

/// Syscall numbers (x86-64) to handlers. The handlers live in one file per family (`Sys*.swift`);
/// numbers not listed here get ENOSYS and are counted.
enum SyscallTable {
    static func definitions() -> [Int: SyscallDefinition] {
        var table: [Int: SyscallDefinition] = [:]
        func add(_ number: Int, _ name: String, _ arguments: [ArgumentKind],
                 _ handler: @escaping (Kernel) -> (SyscallArguments) throws(Errno) -> UInt64) {
            table[number] = SyscallDefinition(name: name, arguments: arguments) { kernel, args throws(Errno) in
                try handler(kernel)(args)
            }
        }
        // Files (SysFile.swift, SysDirectory.swift)
        add(0, "read", [.fd, .outBuffer, .int], Kernel.sysRead)
        add(1, "write", [.fd, .inBuffer(lengthArgument: 2), .int], Kernel.sysWrite)
        add(2, "open", [.path, .flags, .octal], Kernel.sysOpen)
        add(3, "close", [.fd], Kernel.sysClose)
        add(436, "close_range", [.fd, .fd, .flags], Kernel.sysCloseRange)
        add(4, "stat", [.path, .hex], Kernel.sysStat)
        add(5, "fstat", [.fd, .hex], Kernel.sysFstat)
        add(6, "lstat", [.path, .hex], Kernel.sysLstat)
        add(7, "poll", [.hex, .int, .int], Kernel.sysPoll)
        add(8, "lseek", [.fd, .int, .int], Kernel.sysLseek)
        add(271, "ppoll", [.hex, .int, .hex, .hex, .int], Kernel.sysPpoll)
        add(23, "select", [.int, .hex, .hex, .hex, .hex], Kernel.sysSelect)
        add(270, "pselect6", [.int, .hex, .hex, .hex, .hex, .hex], Kernel.sysPselect6)
        add(16, "ioctl", [.fd, .flags, .hex], Kernel.sysIoctl)
        add(17, "pread64", [.fd, .outBuffer, .int, .int], Kernel.sysPread)
        add(18, "pwrite64", [.fd, .inBuffer(lengthArgument: 2), .int, .int], Kernel.sysPwrite)
        add(19, "readv", [.fd, .hex, .int], Kernel.sysReadv)
        add(20, "writev", [.fd, .hex, .int], Kernel.sysWritev)
        add(21, "access", [.path, .octal], Kernel.sysAccess)
        add(32, "dup", [.fd], Kernel.sysDup)
        add(33, "dup2", [.fd, .fd], Kernel.sysDup2)
        add(40, "sendfile", [.fd, .fd, .hex, .int], Kernel.sysSendfile)
        add(72, "fcntl", [.fd, .int, .flags], Kernel.sysFcntl)
        add(79, "getcwd", [.hex, .int], Kernel.sysGetcwd)
        add(80, "chdir", [.path], Kernel.sysChdir)
        add(81, "fchdir", [.fd], Kernel.sysFchdir)
        add(83, "mkdir", [.path, .octal], Kernel.sysMkdir)
        add(84, "rmdir", [.path], Kernel.sysRmdir)
        add(87, "unlink", [.path], Kernel.sysUnlink)
        add(89, "readlink", [.path, .hex, .int], Kernel.sysReadlink)
        add(95, "umask", [.octal], Kernel.sysUmask)
        add(217, "getdents64", [.fd, .hex, .int], Kernel.sysGetdents64)
        add(257, "openat", [.fd, .path, .flags, .octal], Kernel.sysOpenat)
        add(258, "mkdirat", [.fd, .path, .octal], Kernel.sysMkdirat)
        add(262, "newfstatat", [.fd, .path, .hex, .flags], Kernel.sysNewfstatat)
        add(332, "statx", [.fd, .path, .flags, .flags, .hex], Kernel.sysStatx)
        add(263, "unlinkat", [.fd, .path, .flags], Kernel.sysUnlinkat)
        add(267, "readlinkat", [.fd, .path, .hex, .int], Kernel.sysReadlinkat)
        add(269, "faccessat", [.fd, .path, .octal], Kernel.sysFaccessat)
        add(292, "dup3", [.fd, .fd, .flags], Kernel.sysDup3)
        add(439, "faccessat2", [.fd, .path, .octal, .flags], Kernel.sysFaccessat)
        // Metadata and names (SysAttributes.swift)
        add(76, "truncate", [.path, .int], Kernel.sysTruncate)
        add(77, "ftruncate", [.fd, .int], Kernel.sysFtruncate)
        add(82, "rename", [.path, .path], Kernel.sysRename)
        add(86, "link", [.path, .path], Kernel.sysLink)
        add(88, "symlink", [.path, .path], Kernel.sysSymlink)
        add(90, "chmod", [.path, .octal], Kernel.sysChmod)
        add(91, "fchmod", [.fd, .octal], Kernel.sysFchmod)
        add(92, "chown", [.path, .int, .int], Kernel.sysChown)
        add(94, "lchown", [.path, .int, .int], Kernel.sysChown)
        add(133, "mknod", [.path, .octal, .hex], Kernel.sysCreateInRootfs)
        add(264, "renameat", [.fd, .path, .fd, .path], Kernel.sysRenameat)
        add(265, "linkat", [.fd, .path, .fd, .path, .flags], Kernel.sysLinkat)
        add(266, "symlinkat", [.path, .fd, .path], Kernel.sysSymlinkat)
        add(268, "fchmodat", [.fd, .path, .octal], Kernel.sysFchmodat)
        add(280, "utimensat", [.fd, .path, .hex, .flags], Kernel.sysUtimensat)
        add(316, "renameat2", [.fd, .path, .fd, .path, .flags], Kernel.sysRenameat)
        // Filesystem gaps found by CPython's test suite (see the list at the end of this file)
        add(26, "msync", [.hex, .int, .flags], Kernel.sysMsync)
        add(73, "flock", [.fd, .flags], Kernel.sysFlock)
        add(74, "fsync", [.fd], Kernel.sysFsync)
        add(75, "fdatasync", [.fd], Kernel.sysFsync)
        add(93, "fchown", [.fd, .int, .int], Kernel.sysFchown)
        add(112, "setsid", [], Kernel.sysSetsid)
        add(137, "statfs", [.path, .hex], Kernel.sysStatfs)
        add(138, "fstatfs", [.fd, .hex], Kernel.sysFstatfs)
        add(162, "sync", [], Kernel.sysSync)
        add(188, "setxattr", [.path, .path, .hex, .int, .flags], Kernel.sysSetxattr)
        add(189, "lsetxattr", [.path, .path, .hex, .int, .flags], Kernel.sysLsetxattr)
        add(190, "fsetxattr", [.fd, .path, .hex, .int, .flags], Kernel.sysFsetxattr)
        add(191, "getxattr", [.path, .path, .hex, .int], Kernel.sysGetxattr)
        add(192, "lgetxattr", [.path, .path, .hex, .int], Kernel.sysLgetxattr)
        add(193, "fgetxattr", [.fd, .path, .hex, .int], Kernel.sysFgetxattr)
        add(194, "listxattr", [.path, .hex, .int], Kernel.sysListxattr)
        add(195, "llistxattr", [.path, .hex, .int], Kernel.sysLlistxattr)
        add(196, "flistxattr", [.fd, .hex, .int], Kernel.sysFlistxattr)
        add(197, "removexattr", [.path, .path], Kernel.sysRemovexattr)
        add(198, "lremovexattr", [.path, .path], Kernel.sysLremovexattr)
        add(199, "fremovexattr", [.fd, .path], Kernel.sysFremovexattr)
        add(259, "mknodat", [.fd, .path, .octal, .hex], Kernel.sysCreateInRootfs)
        add(260, "fchownat", [.fd, .path, .int, .int, .flags], Kernel.sysFchownat)
        add(275, "splice", [.fd, .hex, .fd, .hex, .int, .flags], Kernel.sysSplice)
        add(276, "tee", [.fd, .fd, .int, .flags], Kernel.sysTee)
        add(277, "sync_file_range", [.fd, .int, .int, .flags], Kernel.sysSyncFileRange)
        add(306, "syncfs", [.fd], Kernel.sysSyncfs)
        add(319, "memfd_create", [.path, .flags], Kernel.sysMemfdCreate)
        add(326, "copy_file_range", [.fd, .hex, .fd, .hex, .int, .flags], Kernel.sysCopyFileRange)
        // Memory (SysMemory.swift)
        add(9, "mmap", [.hex, .int, .flags, .flags, .fd, .int], Kernel.sysMmap)
        add(10, "mprotect", [.hex, .int, .flags], Kernel.sysMprotect)
        add(11, "munmap", [.hex, .int], Kernel.sysMunmap)
        add(12, "brk", [.hex], Kernel.sysBrk)
        add(25, "mremap", [.hex, .int, .int, .flags, .hex], Kernel.sysMremap)
        add(28, "madvise", [.hex, .int, .int], Kernel.sysMadvise)
        // Process (SysProcess.swift, SysSignal.swift, SysFork.swift, SysPipe.swift, SysFutex.swift, SysResources.swift)
        add(22, "pipe", [.hex], Kernel.sysPipe)
        add(293, "pipe2", [.hex, .flags], Kernel.sysPipe2)
        add(56, "clone", [.flags, .hex, .hex, .hex, .hex], Kernel.sysClone)
        add(57, "fork", [], Kernel.sysFork)
        add(58, "vfork", [], Kernel.sysFork)
        add(59, "execve", [.path, .hex, .hex], Kernel.sysExecve)
        add(61, "wait4", [.int, .hex, .flags, .hex], Kernel.sysWait4)
        add(109, "setpgid", [.int, .int], Kernel.sysSetpgid)
        add(13, "rt_sigaction", [.int, .hex, .hex, .int], Kernel.sysRtSigaction)
        add(14, "rt_sigprocmask", [.int, .hex, .hex, .int], Kernel.sysRtSigprocmask)
        add(24, "sched_yield", [], Kernel.sysSchedYield)
        add(39, "getpid", [], Kernel.sysGetpid)
        add(60, "exit", [.int], Kernel.sysExit)
        add(62, "kill", [.int, .int], Kernel.sysKill)
        add(63, "uname", [.hex], Kernel.sysUname)
        add(97, "getrlimit", [.int, .hex], Kernel.sysGetrlimit)
        add(102, "getuid", [], Kernel.sysGetuid)
        add(104, "getgid", [], Kernel.sysGetgid)
        add(107, "geteuid", [], Kernel.sysGetuid)
        add(108, "getegid", [], Kernel.sysGetgid)
        add(110, "getppid", [], Kernel.sysGetppid)
        add(111, "getpgrp", [], Kernel.sysGetpid)
        add(121, "getpgid", [.int], Kernel.sysGetpid)
        add(124, "getsid", [.int], Kernel.sysGetpid)
        add(157, "prctl", [.int, .hex, .hex, .hex, .hex], Kernel.sysPrctl)
        add(158, "arch_prctl", [.flags, .hex], Kernel.sysArchPrctl)
        add(186, "gettid", [], Kernel.sysGetpid)
        add(200, "tkill", [.int, .int], Kernel.sysTkill)
        add(204, "sched_getaffinity", [.int, .int, .hex], Kernel.sysSchedGetaffinity)
        add(218, "set_tid_address", [.hex], Kernel.sysSetTidAddress)
        add(231, "exit_group", [.int], Kernel.sysExit)
        add(234, "tgkill", [.int, .int, .int], Kernel.sysTgkill)
        add(273, "set_robust_list", [.hex, .int], Kernel.sysSetRobustList)
        add(202, "futex", [.hex, .int, .int, .hex, .hex, .int], Kernel.sysFutex)
        add(99, "sysinfo", [.hex], Kernel.sysSysinfo)
        add(98, "getrusage", [.int, .hex], Kernel.sysGetrusage)
        add(302, "prlimit64", [.int, .int, .hex, .hex], Kernel.sysPrlimit64)
        // Time and randomness (SysTime.swift, SysRandom.swift)
        add(35, "nanosleep", [.hex, .hex], Kernel.sysNanosleep)
        add(96, "gettimeofday", [.hex, .hex], Kernel.sysGettimeofday)
        add(201, "time", [.hex], Kernel.sysTime)
        add(228, "clock_gettime", [.int, .hex], Kernel.sysClockGettime)
        add(229, "clock_getres", [.int, .hex], Kernel.sysClockGetres)
        add(230, "clock_nanosleep", [.int, .hex, .hex, .hex], Kernel.sysClockNanosleep)
        add(318, "getrandom", [.outBuffer, .int, .flags], Kernel.sysGetrandom)
        return table
    }
}

// Filesystem calls added on the fs-gaps branch, by number (x86-64). "full" = Linux's behaviour as
// the sandbox can have it; "partial" says what differs.
//   26 msync            full: MAP_SHARED /tmp mappings are the file's pages, nothing to write back
//   73 flock            partial: a blocking request that conflicts fails with EDEADLK (no concurrent holder can release it)
//   74 fsync            full (nothing is ever dirty: read-only rootfs, in-memory /tmp)
//   75 fdatasync        full (as fsync)
//   86 link             full in /tmp and /dev/shm; EXDEV between rootfs and /tmp; EROFS in the rootfs
//   88 symlink          full in /tmp and /dev/shm; EROFS in the rootfs
//   93 fchown           full for /tmp files; EROFS for rootfs files
//  112 setsid           partial: returns the pid; the sandbox is a single session
//  137 statfs           full: tmpfs (0x01021994) for /tmp and /dev/shm; host values + ST_RDONLY for the rootfs
//  138 fstatfs          full (pipes report pipefs)
//  162 sync             full
//  188-199 *xattr       partial: no attributes exist; get/set/remove give EOPNOTSUPP (EROFS to change rootfs files), lists are empty
//  259 mknodat          EROFS, like mknod (no device nodes in /tmp)
//  260 fchownat         full for /tmp (AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH)
//  265 linkat           full in /tmp (AT_SYMLINK_FOLLOW, AT_EMPTY_PATH)
//  266 symlinkat        full in /tmp
//  275 splice           partial: copies through a monitor buffer, at most 1 MiB per call
//  276 tee              partial: EINVAL (callers fall back to read/write)
//  277 sync_file_range  full (nothing to write back)
//  306 syncfs           full
//  319 memfd_create     partial: no file seals (F_ADD_SEALS is EINVAL); MFD_HUGETLB is EINVAL
//  326 copy_file_range  partial: copies, at most 1 MiB per call
// Also: fcntl F_GETLK/F_SETLK/F_SETLKW and F_OFD_* (SysLock.swift; F_SETLKW conflicts give
// EDEADLK), ioctl FIONBIO/FIOASYNC(off)/FIOCLEX/FIONCLEX/FIONREAD (SysFileControl.swift), and
// mmap MAP_SHARED with PROT_WRITE of /tmp files and memfds (SharedFileMemory.swift).
