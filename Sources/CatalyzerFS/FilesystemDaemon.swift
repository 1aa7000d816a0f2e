import CFuse3
import CatalyzerImage
import Glibc

/// Mounts a store and serves it until unmounted: checks, libfuse session, mount, readahead,
/// detaching, the multi-threaded loop, and a clean teardown on `umount` or SIGTERM.
public enum FilesystemDaemon {
    /// Exit statuses, as mount(8) defines them for helpers.
    public enum ExitStatus {
        public static let success: Int32 = 0
        public static let usage: Int32 = 1
        public static let mountFailure: Int32 = 32
    }

    /// Worker threads kept idle between requests; more are started while requests queue up.
    static let idleThreads: UInt32 = 10

    /// Mounts `storePath` at `mountpointPath` and serves it; returns the exit status once the
    /// filesystem is unmounted. Unless `options.foreground`, detaches once mounted: the calling
    /// process exits with status 0 inside this call and the detached daemon carries on.
    /// `remote` makes the fetchers of lazily pulled images (a registry client); without it such
    /// images serve only what the store holds.
    public static func run(storePath: String, mountpointPath: String, options: MountOptions, remote: RemoteFetcherFactory? = nil) -> Int32 {
        if !options.foreground { catalyzerfs_close_inherited_descriptors() }
        let mountpoint: String
        let filesystem: Filesystem
        do {
            mountpoint = try MountChecks.mountpoint(mountpointPath)
            let store = try MountChecks.store(storePath)
            let log = try options.logFile.map(Log.file) ?? (options.foreground ? .standardError : .systemLog())
            filesystem = try Filesystem(store: store, options: options, log: log, remote: remote)
        } catch {
            Log.writeAll(STDERR_FILENO, "catalyzerfs: error: \(error)\n")
            return ExitStatus.mountFailure
        }
        return serve(filesystem, at: mountpoint)
    }

    private static func serve(_ filesystem: Filesystem, at mountpoint: String) -> Int32 {
        let options = filesystem.options
        let store = filesystem.catalog.store.root
        let arguments = options.fuseArguments(store: store).map { strdup($0)! }
        defer { arguments.forEach { free($0) } }
        var argv: [UnsafeMutablePointer<CChar>?] = arguments
        let userdata = Unmanaged.passRetained(filesystem)
        defer { userdata.release() }

        let session: OpaquePointer? = argv.withUnsafeMutableBufferPointer { argv in
            var args = fuse_args(argc: Int32(argv.count), argv: argv.baseAddress, allocated: 0)
            var operations = lowLevelOperations()
            // Option parsing may replace args' vector with an allocated copy; free that after.
            defer { fuse_opt_free_args(&args) }
            return fuse_session_new(&args, &operations, MemoryLayout<fuse_lowlevel_ops>.size, userdata.toOpaque())
        }
        guard let session else {
            Log.writeAll(STDERR_FILENO, "catalyzerfs: error: \(FilesystemError.startFailed(detail: "libfuse refused to create the session (its message above says why)"))\n")
            return ExitStatus.mountFailure
        }
        defer { fuse_session_destroy(session) }
        unblockTerminationSignals()
        guard fuse_set_signal_handlers(session) == 0 else {
            Log.writeAll(STDERR_FILENO, "catalyzerfs: error: cannot install signal handlers\n")
            return ExitStatus.mountFailure
        }
        defer { fuse_remove_signal_handlers(session) }
        guard fuse_session_mount(session, mountpoint) == 0 else {
            Log.writeAll(STDERR_FILENO, "catalyzerfs: error: \(FilesystemError.mountFailed(path: mountpoint))\n")
            return ExitStatus.mountFailure
        }
        if let problem = Readahead.apply(bytes: filesystem.readahead, mountpoint: mountpoint) {
            Log.writeAll(STDERR_FILENO, "catalyzerfs: warning: \(problem)\n")
        }
        filesystem.session.withLock { $0 = SessionHandle(pointer: session) }
        // Detaching forks: nothing before this point may have started a thread.
        if fuse_daemonize(options.foreground ? 1 : 0) != 0 {
            fuse_session_unmount(session)
            return ExitStatus.mountFailure
        }
        // Detached, standard error is /dev/null: send it to the log file, so that what the
        // runtime prints as it stops the process (a failed precondition) is not lost.
        if !options.foreground, let fd = filesystem.log.fileDescriptor { dup2(fd, STDERR_FILENO) }
        filesystem.log.write("serving \(store) at \(mountpoint): cache_size=\(ByteCount.format(options.cacheSize)), readahead=\(ByteCount.format(filesystem.readahead)), prefetch=\(options.prefetch ? "on" : "off")")
        if let problem = filesystem.catalog.store.privacyProblem { filesystem.log.write("warning: \(problem)") }
        let status = catalyzerfs_session_loop_mt(session, idleThreads)
        filesystem.prefetcher.stop()
        filesystem.session.withLock { $0 = nil }
        fuse_session_unmount(session)
        if status < 0 {
            filesystem.log.write("session at \(mountpoint) ended with an error: \(String(cString: strerror(-status)))")
            return ExitStatus.mountFailure
        }
        filesystem.log.write(status > 0 ? "signal \(status): unmounted \(mountpoint)" : "unmounted \(mountpoint)")
        return ExitStatus.success
    }

    /// The daemon may be started with these signals blocked (a mask inherited from a thread of
    /// its starter, e.g. a libdispatch worker); blocked, SIGTERM would never stop it. The worker
    /// threads started later inherit this thread's mask.
    private static func unblockTerminationSignals() {
        var signals = sigset_t()
        sigemptyset(&signals)
        for signal in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&signals, signal) }
        pthread_sigmask(SIG_UNBLOCK, &signals, nil)
    }
}
