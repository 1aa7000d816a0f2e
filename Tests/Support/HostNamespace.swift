/// Host reference runs (the same program under plain chroot, to compare with the sandbox) in a
/// mount namespace of their own, through unshare(1).
///
/// unshare copies every mount of the host into the new namespace, the catalyzerfs mounts other
/// tests hold at that moment included. Mounts on these machines are private, so when such a test
/// then unmounts its store, the copy stays, keeps the FUSE connection alive, and its daemon runs
/// on until this namespace ends (a CPython module's host run lasts minutes): the test waiting for
/// the daemon to exit fails. So the namespace first drops its copies of those mounts.
public enum HostNamespace {
    /// Detaches this namespace's copies of catalyzerfs mounts; no such mount is not an error.
    public static let dropFUSECopies = "umount -a -l -t fuse.catalyzerfs 2>/dev/null; "

    /// `unshare FLAGS -- /bin/sh -c SCRIPT ARGUMENTS...`, with the copies dropped before SCRIPT
    /// runs. In SCRIPT, `$0` is the first of `arguments`, as for `sh -c`.
    public static func arguments(_ flags: [String], script: String, _ arguments: [String]) -> [String] {
        flags + ["--", "/bin/sh", "-c", dropFUSECopies + script] + arguments
    }

    public static let unshare = "/usr/bin/unshare"
}
