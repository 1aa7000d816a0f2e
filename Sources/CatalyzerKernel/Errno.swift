import Glibc

/// A Linux error number returned to the guest; syscall handlers throw it and the dispatcher turns it
/// into `-errno` in RAX. Values are the host's, which are Linux's since the host is Linux x86-64.
public struct Errno: Error, Equatable, CustomStringConvertible {
    public let code: Int32
    public init(_ code: Int32) { self.code = code }

    public var description: String { "\(Errno.names[code] ?? "E\(code)") (\(String(cString: strerror(code))))" }

    /// The host call's errno, for results of host system calls made on the guest's behalf.
    static var lastHostError: Errno { Errno(Glibc.errno) }

    static let EPERM = Errno(Glibc.EPERM), ENOENT = Errno(Glibc.ENOENT), ESRCH = Errno(Glibc.ESRCH)
    static let EINTR = Errno(Glibc.EINTR), EIO = Errno(Glibc.EIO), EBADF = Errno(Glibc.EBADF)
    static let EAGAIN = Errno(Glibc.EAGAIN), ENOMEM = Errno(Glibc.ENOMEM), EACCES = Errno(Glibc.EACCES)
    static let EFAULT = Errno(Glibc.EFAULT), EEXIST = Errno(Glibc.EEXIST), ENOTDIR = Errno(Glibc.ENOTDIR)
    static let EISDIR = Errno(Glibc.EISDIR), EINVAL = Errno(Glibc.EINVAL), EMFILE = Errno(Glibc.EMFILE)
    static let ENOTTY = Errno(Glibc.ENOTTY), ESPIPE = Errno(Glibc.ESPIPE), EROFS = Errno(Glibc.EROFS)
    static let ERANGE = Errno(Glibc.ERANGE), ENAMETOOLONG = Errno(Glibc.ENAMETOOLONG)
    static let ENOSYS = Errno(Glibc.ENOSYS), ENOTEMPTY = Errno(Glibc.ENOTEMPTY), ELOOP = Errno(Glibc.ELOOP)
    static let ENOEXEC = Errno(Glibc.ENOEXEC), EXDEV = Errno(Glibc.EXDEV), EFBIG = Errno(Glibc.EFBIG)
    static let EBUSY = Errno(Glibc.EBUSY), ENOSPC = Errno(Glibc.ENOSPC), EPIPE = Errno(Glibc.EPIPE)
    static let ECHILD = Errno(Glibc.ECHILD), E2BIG = Errno(Glibc.E2BIG), ELIBBAD = Errno(Glibc.ELIBBAD)
    static let ETIMEDOUT = Errno(Glibc.ETIMEDOUT), EOVERFLOW = Errno(Glibc.EOVERFLOW)
    static let ENOTSOCK = Errno(Glibc.ENOTSOCK), ENOTCONN = Errno(Glibc.ENOTCONN)
    static let EAFNOSUPPORT = Errno(Glibc.EAFNOSUPPORT), EPROTONOSUPPORT = Errno(Glibc.EPROTONOSUPPORT)
    static let ECONNRESET = Errno(Glibc.ECONNRESET), EDEADLK = Errno(Glibc.EDEADLK)
    static let EISCONN = Errno(Glibc.EISCONN), ENOBUFS = Errno(Glibc.ENOBUFS), ENOPROTOOPT = Errno(Glibc.ENOPROTOOPT)
    static let EMSGSIZE = Errno(Glibc.EMSGSIZE), EOPNOTSUPP = Errno(Glibc.EOPNOTSUPP), ENFILE = Errno(Glibc.ENFILE)
    /// Not an error the guest sees: a handler parked the task and the syscall re-runs when it is
    /// woken (Linux's ERESTARTSYS plays a similar part). See `SyscallDispatch.swift`.
    static let blocked = Errno(512)
    static let ENODEV = Errno(Glibc.ENODEV)
    static let ENODATA = Errno(Glibc.ENODATA), ENOLCK = Errno(Glibc.ENOLCK)
    static let EADDRINUSE = Errno(Glibc.EADDRINUSE), ECONNREFUSED = Errno(Glibc.ECONNREFUSED)
    static let ENXIO = Errno(Glibc.ENXIO), EPROTOTYPE = Errno(Glibc.EPROTOTYPE)
    static let EDESTADDRREQ = Errno(Glibc.EDESTADDRREQ), EADDRNOTAVAIL = Errno(Glibc.EADDRNOTAVAIL)
    static let ENETUNREACH = Errno(Glibc.ENETUNREACH), EINPROGRESS = Errno(Glibc.EINPROGRESS)
    static let ESOCKTNOSUPPORT = Errno(Glibc.ESOCKTNOSUPPORT)

    private static let names: [Int32: String] = [
        Glibc.EPERM: "EPERM", Glibc.ENOENT: "ENOENT", Glibc.ESRCH: "ESRCH", Glibc.EINTR: "EINTR",
        Glibc.EIO: "EIO", Glibc.EBADF: "EBADF", Glibc.EAGAIN: "EAGAIN", Glibc.ENOMEM: "ENOMEM",
        Glibc.EACCES: "EACCES", Glibc.EFAULT: "EFAULT", Glibc.EEXIST: "EEXIST", Glibc.ENOTDIR: "ENOTDIR",
        Glibc.EISDIR: "EISDIR", Glibc.EINVAL: "EINVAL", Glibc.EMFILE: "EMFILE", Glibc.ENOTTY: "ENOTTY",
        Glibc.ESPIPE: "ESPIPE", Glibc.EROFS: "EROFS", Glibc.ERANGE: "ERANGE",
        Glibc.ENAMETOOLONG: "ENAMETOOLONG", Glibc.ENOSYS: "ENOSYS", Glibc.ENOTEMPTY: "ENOTEMPTY",
        Glibc.ELOOP: "ELOOP", Glibc.ENOEXEC: "ENOEXEC", Glibc.EXDEV: "EXDEV", Glibc.EFBIG: "EFBIG", Glibc.ENOSPC: "ENOSPC", Glibc.EBUSY: "EBUSY",
        Glibc.EPIPE: "EPIPE", Glibc.ECHILD: "ECHILD", Glibc.E2BIG: "E2BIG", Glibc.ELIBBAD: "ELIBBAD",
        Glibc.ETIMEDOUT: "ETIMEDOUT", Glibc.EOVERFLOW: "EOVERFLOW", Glibc.EOPNOTSUPP: "EOPNOTSUPP",
        Glibc.ENOTSOCK: "ENOTSOCK", Glibc.ENOTCONN: "ENOTCONN", Glibc.EAFNOSUPPORT: "EAFNOSUPPORT",
        Glibc.EPROTONOSUPPORT: "EPROTONOSUPPORT", Glibc.ECONNRESET: "ECONNRESET", Glibc.EDEADLK: "EDEADLK",
        Glibc.EMSGSIZE: "EMSGSIZE", Glibc.EISCONN: "EISCONN", Glibc.ENOBUFS: "ENOBUFS", Glibc.ENOPROTOOPT: "ENOPROTOOPT", Glibc.ENFILE: "ENFILE", 512: "ERESTARTSYS",
        Glibc.ENODEV: "ENODEV", Glibc.ENODATA: "ENODATA", Glibc.ENOLCK: "ENOLCK",
        Glibc.EADDRINUSE: "EADDRINUSE", Glibc.ECONNREFUSED: "ECONNREFUSED", Glibc.ENXIO: "ENXIO",
        Glibc.EPROTOTYPE: "EPROTOTYPE", Glibc.EDESTADDRREQ: "EDESTADDRREQ", Glibc.EADDRNOTAVAIL: "EADDRNOTAVAIL",
        Glibc.ENETUNREACH: "ENETUNREACH", Glibc.EINPROGRESS: "EINPROGRESS", Glibc.ESOCKTNOSUPPORT: "ESOCKTNOSUPPORT",
    ]
}
