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
    let handler: (Task, SyscallArguments) throws(Errno) -> UInt64
}

/// Syscall numbers (x86-64) to handlers. The handlers live in one file per family (`Sys*.swift`);
/// numbers not listed here get ENOSYS and are counted.
enum SyscallTable {
    /// Built once per process: every sandbox dispatches through the same immutable table (its
    /// handlers are unbound methods, applied to the calling task), and building it costs more
    /// than the rest of a fork's kernel.
    nonisolated(unsafe) static let shared = definitions()

    static func definitions() -> [Int: SyscallDefinition] {
        var table: [Int: SyscallDefinition] = [:]
        func add(_ number: Int, _ name: String, _ arguments: [ArgumentKind],
                 _ handler: @escaping (Task) -> (SyscallArguments) throws(Errno) -> UInt64) {
            table[number] = SyscallDefinition(name: name, arguments: arguments) { task, args throws(Errno) in
                try handler(task)(args)
            }
        }
        // Files (SysFile.swift, SysDirectory.swift)
        add(0, "read", [.fd, .outBuffer, .int], Task.sysRead)
        add(1, "write", [.fd, .inBuffer(lengthArgument: 2), .int], Task.sysWrite)
        add(2, "open", [.path, .flags, .octal], Task.sysOpen)
        add(3, "close", [.fd], Task.sysClose)
        add(436, "close_range", [.fd, .fd, .flags], Task.sysCloseRange)
        add(4, "stat", [.path, .hex], Task.sysStat)
        add(5, "fstat", [.fd, .hex], Task.sysFstat)
        add(6, "lstat", [.path, .hex], Task.sysLstat)
        add(7, "poll", [.hex, .int, .int], Task.sysPoll)
        add(8, "lseek", [.fd, .int, .int], Task.sysLseek)
        add(271, "ppoll", [.hex, .int, .hex, .hex, .int], Task.sysPpoll)
        add(23, "select", [.int, .hex, .hex, .hex, .hex], Task.sysSelect)
        add(270, "pselect6", [.int, .hex, .hex, .hex, .hex, .hex], Task.sysPselect6)
        add(16, "ioctl", [.fd, .flags, .hex], Task.sysIoctl)
        add(17, "pread64", [.fd, .outBuffer, .int, .int], Task.sysPread)
        add(18, "pwrite64", [.fd, .inBuffer(lengthArgument: 2), .int, .int], Task.sysPwrite)
        add(19, "readv", [.fd, .hex, .int], Task.sysReadv)
        add(20, "writev", [.fd, .hex, .int], Task.sysWritev)
        add(21, "access", [.path, .octal], Task.sysAccess)
        add(32, "dup", [.fd], Task.sysDup)
        add(33, "dup2", [.fd, .fd], Task.sysDup2)
        add(40, "sendfile", [.fd, .fd, .hex, .int], Task.sysSendfile)
        add(72, "fcntl", [.fd, .int, .flags], Task.sysFcntl)
        add(79, "getcwd", [.hex, .int], Task.sysGetcwd)
        add(80, "chdir", [.path], Task.sysChdir)
        add(81, "fchdir", [.fd], Task.sysFchdir)
        add(83, "mkdir", [.path, .octal], Task.sysMkdir)
        add(84, "rmdir", [.path], Task.sysRmdir)
        add(87, "unlink", [.path], Task.sysUnlink)
        add(89, "readlink", [.path, .hex, .int], Task.sysReadlink)
        add(95, "umask", [.octal], Task.sysUmask)
        add(217, "getdents64", [.fd, .hex, .int], Task.sysGetdents64)
        add(257, "openat", [.fd, .path, .flags, .octal], Task.sysOpenat)
        add(258, "mkdirat", [.fd, .path, .octal], Task.sysMkdirat)
        add(262, "newfstatat", [.fd, .path, .hex, .flags], Task.sysNewfstatat)
        add(332, "statx", [.fd, .path, .flags, .flags, .hex], Task.sysStatx)
        add(263, "unlinkat", [.fd, .path, .flags], Task.sysUnlinkat)
        add(267, "readlinkat", [.fd, .path, .hex, .int], Task.sysReadlinkat)
        add(269, "faccessat", [.fd, .path, .octal], Task.sysFaccessat)
        add(292, "dup3", [.fd, .fd, .flags], Task.sysDup3)
        add(439, "faccessat2", [.fd, .path, .octal, .flags], Task.sysFaccessat)
        // Metadata and names (SysAttributes.swift)
        add(76, "truncate", [.path, .int], Task.sysTruncate)
        add(77, "ftruncate", [.fd, .int], Task.sysFtruncate)
        add(82, "rename", [.path, .path], Task.sysRename)
        add(86, "link", [.path, .path], Task.sysLink)
        add(88, "symlink", [.path, .path], Task.sysSymlink)
        add(90, "chmod", [.path, .octal], Task.sysChmod)
        add(91, "fchmod", [.fd, .octal], Task.sysFchmod)
        add(92, "chown", [.path, .int, .int], Task.sysChown)
        add(94, "lchown", [.path, .int, .int], Task.sysChown)
        add(133, "mknod", [.path, .octal, .hex], Task.sysCreateInRootfs)
        add(264, "renameat", [.fd, .path, .fd, .path], Task.sysRenameat)
        add(265, "linkat", [.fd, .path, .fd, .path, .flags], Task.sysLinkat)
        add(266, "symlinkat", [.path, .fd, .path], Task.sysSymlinkat)
        add(268, "fchmodat", [.fd, .path, .octal], Task.sysFchmodat)
        add(280, "utimensat", [.fd, .path, .hex, .flags], Task.sysUtimensat)
        add(316, "renameat2", [.fd, .path, .fd, .path, .flags], Task.sysRenameat)
        // Filesystem gaps found by CPython's test suite (see the list at the end of this file)
        add(26, "msync", [.hex, .int, .flags], Task.sysMsync)
        add(73, "flock", [.fd, .flags], Task.sysFlock)
        add(74, "fsync", [.fd], Task.sysFsync)
        add(75, "fdatasync", [.fd], Task.sysFsync)
        add(93, "fchown", [.fd, .int, .int], Task.sysFchown)
        add(137, "statfs", [.path, .hex], Task.sysStatfs)
        add(138, "fstatfs", [.fd, .hex], Task.sysFstatfs)
        add(162, "sync", [], Task.sysSync)
        add(188, "setxattr", [.path, .path, .hex, .int, .flags], Task.sysSetxattr)
        add(189, "lsetxattr", [.path, .path, .hex, .int, .flags], Task.sysLsetxattr)
        add(190, "fsetxattr", [.fd, .path, .hex, .int, .flags], Task.sysFsetxattr)
        add(191, "getxattr", [.path, .path, .hex, .int], Task.sysGetxattr)
        add(192, "lgetxattr", [.path, .path, .hex, .int], Task.sysLgetxattr)
        add(193, "fgetxattr", [.fd, .path, .hex, .int], Task.sysFgetxattr)
        add(194, "listxattr", [.path, .hex, .int], Task.sysListxattr)
        add(195, "llistxattr", [.path, .hex, .int], Task.sysLlistxattr)
        add(196, "flistxattr", [.fd, .hex, .int], Task.sysFlistxattr)
        add(197, "removexattr", [.path, .path], Task.sysRemovexattr)
        add(198, "lremovexattr", [.path, .path], Task.sysLremovexattr)
        add(199, "fremovexattr", [.fd, .path], Task.sysFremovexattr)
        add(259, "mknodat", [.fd, .path, .octal, .hex], Task.sysCreateInRootfs)
        add(260, "fchownat", [.fd, .path, .int, .int, .flags], Task.sysFchownat)
        add(275, "splice", [.fd, .hex, .fd, .hex, .int, .flags], Task.sysSplice)
        add(276, "tee", [.fd, .fd, .int, .flags], Task.sysTee)
        add(277, "sync_file_range", [.fd, .int, .int, .flags], Task.sysSyncFileRange)
        add(306, "syncfs", [.fd], Task.sysSyncfs)
        add(319, "memfd_create", [.path, .flags], Task.sysMemfdCreate)
        add(326, "copy_file_range", [.fd, .hex, .fd, .hex, .int, .flags], Task.sysCopyFileRange)
        // Memory (SysMemory.swift)
        add(9, "mmap", [.hex, .int, .flags, .flags, .fd, .int], Task.sysMmap)
        add(10, "mprotect", [.hex, .int, .flags], Task.sysMprotect)
        add(11, "munmap", [.hex, .int], Task.sysMunmap)
        add(12, "brk", [.hex], Task.sysBrk)
        add(25, "mremap", [.hex, .int, .int, .flags, .hex], Task.sysMremap)
        add(28, "madvise", [.hex, .int, .int], Task.sysMadvise)
        // Process (SysProcess.swift, SysSignal.swift, SysFork.swift, SysPipe.swift, SysFutex.swift, SysResources.swift)
        add(22, "pipe", [.hex], Task.sysPipe)
        add(293, "pipe2", [.hex, .flags], Task.sysPipe2)
        add(56, "clone", [.flags, .hex, .hex, .hex, .hex], Task.sysClone)
        add(57, "fork", [], Task.sysFork)
        add(58, "vfork", [], Task.sysVfork)
        add(59, "execve", [.path, .hex, .hex], Task.sysExecve)
        add(61, "wait4", [.int, .hex, .flags, .hex], Task.sysWait4)
        add(109, "setpgid", [.int, .int], Task.sysSetpgid)
        add(13, "rt_sigaction", [.int, .hex, .hex, .int], Task.sysRtSigaction)
        add(14, "rt_sigprocmask", [.int, .hex, .hex, .int], Task.sysRtSigprocmask)
        add(24, "sched_yield", [], Task.sysSchedYield)
        add(39, "getpid", [], Task.sysGetpid)
        add(60, "exit", [.int], Task.sysExit)
        add(231, "exit_group", [.int], Task.sysExitGroup)
        add(435, "clone3", [.hex, .int], Task.sysClone3)
        add(247, "waitid", [.int, .int, .hex, .flags, .hex], Task.sysWaitid)
        add(322, "execveat", [.fd, .path, .hex, .hex, .flags], Task.sysExecveat)
        add(112, "setsid", [], Task.sysSetsid)
        add(274, "get_robust_list", [.int, .hex, .hex], Task.sysGetRobustList)
        add(15, "rt_sigreturn", [], Task.sysRtSigreturn)
        add(127, "rt_sigpending", [.hex, .int], Task.sysRtSigpending)
        add(128, "rt_sigtimedwait", [.hex, .hex, .hex, .int], Task.sysRtSigtimedwait)
        add(129, "rt_sigqueueinfo", [.int, .int, .hex], Task.sysRtSigqueueinfo)
        add(130, "rt_sigsuspend", [.hex, .int], Task.sysRtSigsuspend)
        add(131, "sigaltstack", [.hex, .hex], Task.sysSigaltstack)
        add(34, "pause", [], Task.sysPause)
        add(37, "alarm", [.int], Task.sysAlarm)
        add(36, "getitimer", [.int, .hex], Task.sysGetitimer)
        add(38, "setitimer", [.int, .hex, .hex], Task.sysSetitimer)
        add(222, "timer_create", [.int, .hex, .hex], Task.sysTimerCreate)
        add(223, "timer_settime", [.int, .flags, .hex, .hex], Task.sysTimerSettime)
        add(224, "timer_gettime", [.int, .hex], Task.sysTimerGettime)
        add(225, "timer_getoverrun", [.int], Task.sysTimerGetoverrun)
        add(226, "timer_delete", [.int], Task.sysTimerDelete)
        add(62, "kill", [.int, .int], Task.sysKill)
        add(63, "uname", [.hex], Task.sysUname)
        add(170, "sethostname", [.hex, .int], Task.sysSethostname)
        add(171, "setdomainname", [.hex, .int], Task.sysSetdomainname)
        add(97, "getrlimit", [.int, .hex], Task.sysGetrlimit)
        add(102, "getuid", [], Task.sysGetuid)
        add(104, "getgid", [], Task.sysGetgid)
        add(107, "geteuid", [], Task.sysGeteuid)
        add(108, "getegid", [], Task.sysGetegid)
        // User and group IDs, priority (SysIdentity.swift)
        add(105, "setuid", [.int], Task.sysSetuid)
        add(106, "setgid", [.int], Task.sysSetgid)
        add(113, "setreuid", [.int, .int], Task.sysSetreuid)
        add(114, "setregid", [.int, .int], Task.sysSetregid)
        add(115, "getgroups", [.int, .hex], Task.sysGetgroups)
        add(116, "setgroups", [.int, .hex], Task.sysSetgroups)
        add(117, "setresuid", [.int, .int, .int], Task.sysSetresuid)
        add(118, "getresuid", [.hex, .hex, .hex], Task.sysGetresuid)
        add(119, "setresgid", [.int, .int, .int], Task.sysSetresgid)
        add(120, "getresgid", [.hex, .hex, .hex], Task.sysGetresgid)
        add(122, "setfsuid", [.int], Task.sysSetfsuid)
        add(123, "setfsgid", [.int], Task.sysSetfsgid)
        add(140, "getpriority", [.int, .int], Task.sysGetpriority)
        add(141, "setpriority", [.int, .int, .int], Task.sysSetpriority)
        add(110, "getppid", [], Task.sysGetppid)
        add(111, "getpgrp", [], Task.sysGetpid)
        add(121, "getpgid", [.int], Task.sysGetpid)
        add(124, "getsid", [.int], Task.sysGetpid)
        add(157, "prctl", [.int, .hex, .hex, .hex, .hex], Task.sysPrctl)
        add(158, "arch_prctl", [.flags, .hex], Task.sysArchPrctl)
        add(186, "gettid", [], Task.sysGettid)
        add(200, "tkill", [.int, .int], Task.sysTkill)
        add(204, "sched_getaffinity", [.int, .int, .hex], Task.sysSchedGetaffinity)
        add(218, "set_tid_address", [.hex], Task.sysSetTidAddress)
        add(234, "tgkill", [.int, .int, .int], Task.sysTgkill)
        add(424, "pidfd_send_signal", [.fd, .int, .hex, .flags], Task.sysPidfdSendSignal)
        add(434, "pidfd_open", [.int, .flags], Task.sysPidfdOpen)
        add(273, "set_robust_list", [.hex, .int], Task.sysSetRobustList)
        add(202, "futex", [.hex, .int, .int, .hex, .hex, .int], Task.sysFutex)
        add(99, "sysinfo", [.hex], Task.sysSysinfo)
        add(98, "getrusage", [.int, .hex], Task.sysGetrusage)
        add(100, "times", [.hex], Task.sysTimes)
        add(302, "prlimit64", [.int, .int, .hex, .hex], Task.sysPrlimit64)
        // Events (SysEvents.swift)
        add(284, "eventfd", [.int], Task.sysEventfd)
        add(290, "eventfd2", [.int, .flags], Task.sysEventfd2)
        add(283, "timerfd_create", [.int, .flags], Task.sysTimerfdCreate)
        add(286, "timerfd_settime", [.fd, .flags, .hex, .hex], Task.sysTimerfdSettime)
        add(287, "timerfd_gettime", [.fd, .hex], Task.sysTimerfdGettime)
        add(213, "epoll_create", [.int], Task.sysEpollCreate)
        add(291, "epoll_create1", [.flags], Task.sysEpollCreate1)
        add(233, "epoll_ctl", [.fd, .int, .fd, .hex], Task.sysEpollCtl)
        add(232, "epoll_wait", [.fd, .hex, .int, .int], Task.sysEpollWait)
        add(281, "epoll_pwait", [.fd, .hex, .int, .int, .hex, .int], Task.sysEpollPwait)
        add(441, "epoll_pwait2", [.fd, .hex, .int, .hex, .hex, .int], Task.sysEpollPwait2)
        // Sockets (SysSocket.swift)
        add(41, "socket", [.int, .flags, .int], Task.sysSocket)
        add(53, "socketpair", [.int, .flags, .int, .hex], Task.sysSocketpair)
        add(44, "sendto", [.fd, .inBuffer(lengthArgument: 2), .int, .flags, .hex, .int], Task.sysSendto)
        add(45, "recvfrom", [.fd, .outBuffer, .int, .flags, .hex, .hex], Task.sysRecvfrom)
        add(46, "sendmsg", [.fd, .hex, .flags], Task.sysSendmsg)
        add(47, "recvmsg", [.fd, .hex, .flags], Task.sysRecvmsg)
        add(299, "recvmmsg", [.fd, .hex, .int, .flags, .hex], Task.sysRecvmmsg)
        add(307, "sendmmsg", [.fd, .hex, .int, .flags], Task.sysSendmmsg)
        add(48, "shutdown", [.fd, .int], Task.sysShutdown)
        add(51, "getsockname", [.fd, .hex, .hex], Task.sysGetsockname)
        add(52, "getpeername", [.fd, .hex, .hex], Task.sysGetpeername)
        add(54, "setsockopt", [.fd, .int, .int, .hex, .int], Task.sysSetsockopt)
        add(55, "getsockopt", [.fd, .int, .int, .hex, .hex], Task.sysGetsockopt)
        add(42, "connect", [.fd, .hex, .int], Task.sysConnect)
        add(43, "accept", [.fd, .hex, .hex], Task.sysAccept)
        add(288, "accept4", [.fd, .hex, .hex, .flags], Task.sysAccept4)
        add(49, "bind", [.fd, .hex, .int], Task.sysBind)
        add(50, "listen", [.fd, .int], Task.sysListen)
        // Time and randomness (SysTime.swift, SysRandom.swift)
        add(35, "nanosleep", [.hex, .hex], Task.sysNanosleep)
        add(96, "gettimeofday", [.hex, .hex], Task.sysGettimeofday)
        add(201, "time", [.hex], Task.sysTime)
        add(228, "clock_gettime", [.int, .hex], Task.sysClockGettime)
        add(229, "clock_getres", [.int, .hex], Task.sysClockGetres)
        add(227, "clock_settime", [.int, .hex], Task.sysClockSettime)
        add(164, "settimeofday", [.hex, .hex], Task.sysSettimeofday)
        add(230, "clock_nanosleep", [.int, .hex, .hex, .hex], Task.sysClockNanosleep)
        add(318, "getrandom", [.outBuffer, .int, .flags], Task.sysGetrandom)
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
