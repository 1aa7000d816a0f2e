import CatalyzerFS
import CatalyzerImage
import CatalyzerRegistry
import Glibc

// catalyzerfs STORE MOUNTPOINT [-o OPTIONS] [-f] [-d]: the FUSE daemon (see --help).
do {
    switch try DaemonCommandLine.parse(Array(CommandLine.arguments.dropFirst())) {
    case .help:
        Log.writeAll(STDOUT_FILENO, DaemonCommandLine.usage + "\n")
    case .version:
        Log.writeAll(STDOUT_FILENO, "catalyzerfs \(CatalyzerVersion.current)\n")
    case let .mount(store, mountpoint, options):
        exit(FilesystemDaemon.run(storePath: store, mountpointPath: mountpoint, options: options, remote: RegistryBlobFetcher.forImage))
    }
} catch {
    Log.writeAll(STDERR_FILENO, "catalyzerfs: error: \(error)\n")
    exit(FilesystemDaemon.ExitStatus.usage)
}
