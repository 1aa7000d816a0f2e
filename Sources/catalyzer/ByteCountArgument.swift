import ArgumentParser
import CatalyzerImage

/// A size argument such as `256K`, `1M`, `4096` or `2GiB`.
struct ByteCountArgument: ExpressibleByArgument, Sendable {
    let bytes: Int64

    init?(argument: String) {
        guard let bytes = ByteCount.parse(argument) else { return nil }
        self.bytes = bytes
    }

    /// How `--help` shows a default: `256 KiB`, not the struct.
    var defaultValueDescription: String { ByteCount.format(bytes) }

    static var defaultCompletionKind: CompletionKind { .default }
}
