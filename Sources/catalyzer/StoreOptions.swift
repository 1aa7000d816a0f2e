import ArgumentParser
import CatalyzerImage

/// `--store`, shared by every command that touches the local image store.
struct StoreOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "The image store directory (an OCI image layout).",
        discussion: "Defaults to $CATALYZER_STORE, else /var/lib/catalyzer."))
    var store: String?

    var imageStore: ImageStore { ImageStore(root: store ?? ImageStore.defaultRoot) }
}
