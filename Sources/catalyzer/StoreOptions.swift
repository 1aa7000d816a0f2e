import ArgumentParser
import CatalyzerImage
import Synchronization

/// `--store`, shared by every command that touches the local image store.
struct StoreOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "The image store directory (an OCI image layout).",
        discussion: "Defaults to $CATALYZER_STORE, else /var/lib/catalyzer."))
    var store: String?

    /// The store. The first time a command asks for it, a store that other users can read is
    /// warned about (not refused: images in a store made by an older catalyzer stay usable, and
    /// the warning says how to make it private).
    var imageStore: ImageStore {
        let imageStore = ImageStore(root: store ?? ImageStore.defaultRoot)
        if !Self.warned.exchange(true, ordering: .relaxed), let problem = imageStore.privacyProblem {
            Output.err("catalyzer: warning: \(problem)")
        }
        return imageStore
    }

    private static let warned = Atomic<Bool>(false)
}
