import Testing
@testable import CatalyzerFS

/// The daemon's command line as mount(8) and people write it.
@Suite("catalyzerfs options")
struct OptionTests {
    @Test("mount(8)'s helper command line parses")
    func mountHelperCommandLine() throws {
        let action = try DaemonCommandLine.parse(["/var/lib/catalyzer", "/mnt/catalyzer", "-n", "-o", "ro,cache_size=64M,readahead=1M,prefetch=off,allow_other,noatime,noauto,x-systemd.automount"])
        guard case let .mount(store, mountpoint, options) = action else { Issue.record("not a mount: \(action)"); return }
        #expect(store == "/var/lib/catalyzer" && mountpoint == "/mnt/catalyzer")
        #expect(options.cacheSize == 64 << 20 && options.readahead == 1 << 20)
        #expect(!options.prefetch && options.allowOther && options.kernelFlags == ["noatime"])
        #expect(options.fuseArguments(store: store) == ["catalyzerfs", "-o", "ro,default_permissions,subtype=catalyzerfs,fsname=/var/lib/catalyzer,noatime,allow_other"])
    }

    @Test("defaults, -f, -d and --help")
    func flags() throws {
        guard case let .mount(_, _, defaults) = try DaemonCommandLine.parse(["s", "m"]) else { Issue.record("not a mount"); return }
        #expect(defaults == MountOptions() && defaults.prefetch && !defaults.foreground && defaults.cacheSize == 256 << 20)
        guard case let .mount(_, _, debug) = try DaemonCommandLine.parse(["-d", "s", "m"]) else { Issue.record("not a mount"); return }
        #expect(debug.debug && debug.foreground)
        guard case let .mount(_, _, foreground) = try DaemonCommandLine.parse(["s", "-f", "m"]) else { Issue.record("not a mount"); return }
        #expect(foreground.foreground)
        #expect(try DaemonCommandLine.parse(["--help"]) == .help)
        for option in ["cache_size", "readahead=", "prefetch", "foreground", "allow_other", "log=PATH"] {
            #expect(DaemonCommandLine.usage.contains(option))
        }
    }

    @Test("bad command lines say what is wrong", arguments: [
        ["s"], ["s", "m", "x"], ["s", "m", "-o", "cache_size=big"], ["s", "m", "-o", "prefetch=maybe"],
        ["s", "m", "-o", "nonsense"], ["s", "m", "-o"], ["s", "m", "--frobnicate"], ["s", "m", "-o", "log=relative"],
    ])
    func badCommandLines(_ arguments: [String]) {
        #expect(throws: FilesystemError.self) { try DaemonCommandLine.parse(arguments) }
    }
}
