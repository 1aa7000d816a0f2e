/// The command line of the `catalyzerfs` daemon, in the form mount(8) gives its helpers:
/// `catalyzerfs STORE MOUNTPOINT [-o OPTIONS]... [-f] [-d]`.
public struct DaemonCommandLine: Sendable, Equatable {
    public enum Action: Sendable, Equatable {
        case mount(store: String, mountpoint: String, options: MountOptions)
        case help
        case version
    }

    /// Parses the arguments after the program name.
    public static func parse(_ arguments: [String]) throws(FilesystemError) -> Action {
        var options = MountOptions()
        var positional: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            switch argument {
            case "-h", "--help":
                return .help
            case "-V", "--version":
                return .version
            case "-f":
                options.foreground = true
            case "-d":
                try options.apply("debug")
            case "-o":
                guard index < arguments.count else { throw .usage("-o needs a list of options") }
                try options.apply(arguments[index])
                index += 1
            case "-n", "-s", "-v":
                // mount(8) passes these to helpers (no mtab, sloppy, verbose); nothing to do.
                break
            default:
                if argument.hasPrefix("-o") && argument.count > 2 {
                    try options.apply(String(argument.dropFirst(2)))
                } else if argument.hasPrefix("-") {
                    throw .usage("unknown flag '\(argument)'")
                } else {
                    positional.append(argument)
                }
            }
        }
        guard positional.count == 2 else {
            throw .usage("expected STORE and MOUNTPOINT, got \(positional.count) argument\(positional.count == 1 ? "" : "s")")
        }
        return .mount(store: positional[0], mountpoint: positional[1], options: options)
    }

    public static let usage = """
        usage: catalyzerfs STORE MOUNTPOINT [-o OPTION[,OPTION...]] [-f] [-d]

        Mounts the catalyzer image store STORE (an OCI image layout, e.g. /var/lib/catalyzer) read-only
        at MOUNTPOINT. For every image NAME in the store it serves:
            MOUNTPOINT/NAME/memory          the guest memory, its full size; chunks are fetched, verified
                                            and decompressed on first read (map it MAP_PRIVATE to restore)
            MOUNTPOINT/NAME/state           the monitor's state blob
            MOUNTPOINT/NAME/manifest.json   the image's OCI manifest as stored
            MOUNTPOINT/.stats               JSON counters per image: reads served, bytes returned, blobs
                                            and bytes fetched, decompression time, cache hits, errors
        Images created or removed in the store appear and disappear without remounting. A chunk whose
        blob fails verification is an I/O error (EIO) for that read, never wrong bytes, and a log line.

        The daemon detaches once the filesystem is mounted; `umount MOUNTPOINT` or SIGTERM stops it
        cleanly. Usually started by mount(8): `mount -t catalyzerfs STORE MOUNTPOINT -o OPTIONS`, or the
        fstab line `STORE MOUNTPOINT catalyzerfs ro,cache_size=256M 0 0`.

        FLAGS:
            -o OPTIONS          mount options, below
            -f                  stay in the foreground (-o foreground)
            -d                  debug: print every FUSE request, stay in the foreground (-o debug)
            -h, --help          this help
            -V, --version       the version
            -n, -s, -v          accepted from mount(8) and ignored
        \n
        """ + MountOptions.help + """
        \n
        EXIT STATUS (as mount(8) expects of helpers): 0 once mounted (detached) or after a clean
        unmount (foreground); 1 for a wrong command line or option; 32 when the mount fails.
        """
}
