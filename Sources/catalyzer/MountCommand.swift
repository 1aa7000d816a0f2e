import ArgumentParser
import CatalyzerRuntime

/// `catalyzer mount`: the managed catalyzerfs mount that `catalyzer invoke` uses when given no
/// mount of its own, made ahead of time, located, or stopped.
struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount catalyzerfs for the store where `catalyzer invoke` uses it, and print the mountpoint.",
        discussion: """
            Without --mount or $CATALYZER_MOUNT, `catalyzer invoke` maps image memory from the managed \
            mount: catalyzerfs serving the store, mounted by catalyzer itself on a private mountpoint, \
            $CATALYZER_RUN_DIR/mounts/KEY (default /run/catalyzer/mounts/KEY), where KEY is the first 16 \
            hex digits of the sha256 of the store's canonical path. Its daemon logs to \
            $CATALYZER_RUN_DIR/mounts/KEY.log.

            The first invocation mounts it; every later one, concurrent ones included, reuses it and \
            the page cache it has filled. If its daemon dies, the next invocation mounts it again. \
            This command does the same without invoking anything (mounting ahead of the first \
            invocation, so that it pays no mount) and prints the mountpoint.

            The mount stays until unmounted: `catalyzer mount --unmount` (or `umount` on the printed \
            path) stops its daemon. Unmounting fails while sandboxes still map its files.
            """
    )

    @Flag(help: "Only print where the store's managed mount lives; mount nothing.")
    var mountDir = false

    @Flag(help: "Unmount the store's managed mount, stopping its daemon (nothing to do if it is not mounted).")
    var unmount = false

    @OptionGroup var storeOptions: StoreOptions

    func validate() throws {
        if mountDir && unmount { throw ValidationError("--mount-dir and --unmount cannot be combined") }
    }

    func run() throws {
        try Output.run {
            let store = storeOptions.imageStore
            if mountDir {
                Output.out(CatalyzerMount.managedMountpoint(for: store))
            } else if unmount {
                try CatalyzerMount.unmountManaged(store: store)
            } else {
                Output.out(try CatalyzerMount.managed(store: store).mountpoint)
            }
        }
    }
}
