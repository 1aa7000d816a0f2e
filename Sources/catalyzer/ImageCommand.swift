import ArgumentParser
import CatalyzerImage
import CatalyzerRuntime
import Foundation

extension Codec: ExpressibleByArgument {}

/// `catalyzer image ...`: the local image store.
struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Create, list, inspect, verify and remove images in the local store.",
        subcommands: [Create.self, List.self, Inspect.self, Verify.self, Remove.self, GC.self, Export.self]
    )

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create an image from a raw guest-memory file.",
            discussion: "The file is split into chunks; all-zero chunks are left out and the rest are compressed and stored by digest. The name is published only once every blob is stored, so a failed create leaves no image behind.")

        @Option(help: "The raw memory file, or - for standard input.") var from: String
        @Option(help: "The image name (letters, digits, '.', '_', '-').") var name: String
        @Option(help: "Chunk codec: zstd, lz4 or none.") var codec: Codec = .zstd
        @Option(help: "zstd compression level (1-22).") var level: Int = Codec.defaultZstdLevel
        @Option(help: "Chunk size, a power of two from 4K to 64M (e.g. 256K).")
        var chunkSize: ByteCountArgument = ByteCountArgument(argument: "256K")!
        @Flag(help: "Print the result as JSON.") var json = false
        @OptionGroup var storeOptions: StoreOptions

        func run() throws {
            try Output.run {
                var options = ImageCreateOptions()
                options.codec = codec
                options.compressionLevel = level
                options.chunkSize = Int(chunkSize.bytes)
                let report = try storeOptions.imageStore.createImage(named: name, fromFile: from, options: options)
                if json { return Output.json(report) }
                let ratio = report.storedBytes > 0 ? Double(report.memorySize) / Double(report.storedBytes) : 0
                Output.out("""
                    created \(report.name) (\(report.manifestDigest))
                      memory   \(ByteCount.format(report.memorySize)) in \(report.chunkCount) chunks of \(ByteCount.format(Int64(report.chunkSize))); \(report.zeroChunks) all-zero chunks left out
                      stored   \(ByteCount.format(report.storedBytes)) with \(report.codec) (\(String(format: "%.2f", ratio))x); \(ByteCount.format(report.newBytes)) new in the store
                      took     \(String(format: "%.2f", report.seconds)) s (\(String(format: "%.0f", Double(report.memorySize) / 1048576 / max(report.seconds, 1e-9))) MiB/s)
                    """)
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the images in the store.")
        @Flag(help: "Print the list as JSON.") var json = false
        @OptionGroup var storeOptions: StoreOptions

        struct Row: Encodable {
            var name: String
            var digest: String
            var memorySize: Int64?
            var storedBytes: Int64?
            var codec: String?
            var created: String?
            var locality: ImageLocality?
            var error: String?
        }

        static func describe(_ locality: ImageLocality) -> String {
            guard locality.lazy else { return "full" }
            let here = locality.localBytes + locality.cachedBytes
            return "lazy \(locality.bytes > 0 ? Int(100 * here / locality.bytes) : 100)%"
        }

        func run() throws {
            try Output.run {
                let store = storeOptions.imageStore
                let rows = try store.names().map { name -> Row in
                    do {
                        let image = try store.open(name)
                        return Row(name: name, digest: image.manifestDescriptor.digest.description,
                                   memorySize: image.config.memorySize, storedBytes: image.config.storedChunkBytes,
                                   codec: image.config.codec.rawValue, created: image.config.created, locality: store.locality(of: image))
                    } catch {
                        // One damaged image is a row and a warning, never the end of the listing.
                        Output.err("catalyzer: warning: \(error)")
                        let digest = (try? store.manifestDescriptor(named: name).digest.description) ?? "?"
                        return Row(name: name, digest: digest, error: String(describing: error))
                    }
                }
                if json { return Output.json(rows) }
                Output.out(Output.table(["NAME", "DIGEST", "MEMORY", "STORED", "CODEC", "LOCAL", "CREATED"], rows.map { row in
                    [row.name, String(row.digest.dropFirst(7).prefix(12)),
                     row.memorySize.map(ByteCount.format) ?? "-", row.storedBytes.map(ByteCount.format) ?? "-",
                     row.codec ?? "-", row.locality.map(Self.describe) ?? "-",
                     row.created ?? "damaged: run `catalyzer image verify \(row.name)`"]
                }))
            }
        }
    }

    struct Inspect: ParsableCommand {
        static func describeLocality(_ locality: ImageLocality) -> String {
            guard locality.lazy else { return "fully local" }
            let here = locality.localBytes + locality.cachedBytes
            return "lazy, from \(locality.origin ?? "?"): \(locality.localBlobs) of \(locality.blobs) blobs in the store, \(locality.cachedBlobs) more in the cache; \(ByteCount.format(here)) of \(ByteCount.format(locality.bytes)) on this node"
        }

        static let configuration = CommandConfiguration(abstract: "Show an image's manifest, chunk table summary and sizes.")
        @Argument(help: "The image name.") var name: String
        @Flag(help: "Print the manifest and config as JSON.") var json = false
        @OptionGroup var storeOptions: StoreOptions

        struct Details: Encodable {
            var name: String
            var manifestDigest: Digest
            var manifest: OCIManifest
            var config: ImageConfig
            var locality: ImageLocality
            /// The network policy recorded in the image's state (`checkpoint --net-allow`, `--dns`).
            var network: NetworkRecord?
        }

        struct NetworkRecord: Encodable {
            var allow: [String]
            var dns: String?

            /// One line for `image inspect` and `function inspect`.
            var summary: String {
                guard !allow.isEmpty || dns != nil else { return "none beyond its sandbox" }
                return "allow " + (allow.isEmpty ? "nothing" : allow.joined(separator: ", ")) + (dns.map { "; dns " + $0 } ?? "")
            }
        }

        /// The policy recorded in the image's state; nil for a plain memory image or a state that
        /// does not read (`image verify` says why).
        static func network(of image: Image, named name: String, in store: ImageStore) -> NetworkRecord? {
            let descriptor = image.config.state
            guard descriptor.size > 0,
                  let bytes = try? store.readVerifiedBlob(descriptor.digest, size: descriptor.size, image: name, role: "state"),
                  let state = try? CheckpointState(decoding: bytes, image: name) else { return nil }
            return NetworkRecord(allow: state.networkRules, dns: state.networkResolver)
        }

        func run() throws {
            try Output.run {
                let image = try storeOptions.imageStore.open(name)
                let config = image.config
                let network = Self.network(of: image, named: name, in: storeOptions.imageStore)
                if json {
                    return Output.json(Details(name: name, manifestDigest: image.manifestDescriptor.digest,
                                               manifest: image.manifest, config: config, locality: storeOptions.imageStore.locality(of: image),
                                               network: network))
                }
                let networkText = network?.summary ?? "-"
                let codecs = Dictionary(grouping: config.chunks, by: \.codec)
                    .map { "\($0.key): \($0.value.count)" }.sorted().joined(separator: ", ")
                let unique = Set(config.chunks.map(\.digest)).count
                let ratio = config.storedChunkBytes > 0 ? Double(config.memorySize) / Double(config.storedChunkBytes) : 0
                Output.out("""
                    name            \(name)
                    manifest        \(image.manifestDescriptor.digest)
                    format version  \(config.formatVersion)
                    created         \(config.created) by \(config.creator)
                    memory          \(ByteCount.format(config.memorySize)) (\(config.memorySize) bytes)
                    chunk size      \(ByteCount.format(Int64(config.chunkSize)))
                    chunks          \(config.chunkCount) in all, \(config.chunks.count) stored (\(unique) distinct blobs), \(config.chunkCount - config.chunks.count) all-zero
                    codec           \(config.codec)\(config.compressionLevel.map { " level \($0)" } ?? "") (\(codecs.isEmpty ? "no chunks" : codecs))
                    stored          \(ByteCount.format(config.storedChunkBytes)) (\(String(format: "%.2f", ratio))x)
                    state           \(ByteCount.format(config.state.size)) \(config.state.digest)
                    working set     \(config.workingSet.map { "\($0.count) chunks" } ?? "none recorded")\(config.pageWorkingSet.map { "; \($0.pages) pages installed at restore (blob \(ByteCount.format($0.blob.size)) \($0.blob.digest.short))" } ?? "")
                    network         \(networkText)
                    local           \(Self.describeLocality(storeOptions.imageStore.locality(of: image)))
                    rootfs          \(config.rootfs.map { "\($0.layers.count) layer\($0.layers.count == 1 ? "" : "s"), \(ByteCount.format($0.layers.reduce(0) { $0 + $1.size })) (\($0.layers.map(\.digest.short).joined(separator: ", "))) from \($0.path)" } ?? "not carried (restores only where its rootfs directory is)")
                    """ + (config.annotations ?? [:]).sorted { $0.key < $1.key }.enumerated().map { index, entry in
                        (index == 0 ? "\nannotations     " : "\n                ") + "\(entry.key)=\(entry.value)"
                    }.joined())
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-hash every blob of images and decompress every chunk.",
            discussion: "Exits 1 if any image has a problem, listing every problem found.")
        @Argument(help: "Image names.") var names: [String] = []
        @Flag(help: "Verify every image in the store.") var all = false
        @Flag(help: "Print the reports as JSON.") var json = false
        @OptionGroup var storeOptions: StoreOptions

        func validate() throws {
            if names.isEmpty && !all { throw ValidationError("name an image, or pass --all") }
        }

        func run() throws {
            var failed = false
            try Output.run {
                let store = storeOptions.imageStore
                // The state is decoded as a restore would, so "ok" means the image can be restored.
                let reports = try (all ? store.names() : names).map {
                    try store.verify($0, stateCheck: CheckpointState.verificationProblems)
                }
                failed = reports.contains { !$0.ok }
                if json { return Output.json(reports) }
                for report in reports {
                    if report.ok {
                        Output.out("\(report.name): ok (\(report.blobsChecked) blobs, \(ByteCount.format(report.bytesChecked)))"
                                   + (report.remoteBlobs > 0 ? "; \(report.remoteBlobs) chunk blobs are in the registry (pulled with --lazy), not checked" : ""))
                    } else {
                        for problem in report.problems { Output.err("catalyzer: error: \(problem)") }
                        Output.out("\(report.name): \(report.problems.count) problem\(report.problems.count == 1 ? "" : "s")")
                    }
                }
            }
            if failed { throw ExitCode.failure }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rm", abstract: "Remove image names. Their blobs are freed by `image gc`.")
        @Argument(help: "Image names.") var names: [String]
        @OptionGroup var storeOptions: StoreOptions

        func run() throws {
            try Output.run {
                for name in names {
                    try storeOptions.imageStore.remove(name)
                    Output.out("removed \(name)")
                }
            }
        }
    }

    struct GC: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gc", abstract: "Delete blobs that no image refers to, and leftovers of interrupted writes.",
            discussion: "Blobs of an image version that was replaced or removed are kept while a sandbox restored from it still runs: the catalyzerfs mounts of the store report the versions whose memory files are open.")
        @Flag(help: "Print the result as JSON.") var json = false
        @OptionGroup var storeOptions: StoreOptions

        func run() throws {
            try Output.run {
                let store = storeOptions.imageStore
                let report = try store.gc(manifestsInUse: { ImagesInUse.manifests(of: store) })
                for entry in report.foreignEntries {
                    Output.err("catalyzer: warning: \(entry) is not a blob (the store writes only regular files there); gc left it in place: remove it by hand")
                }
                if json { return Output.json(report) }
                Output.out("removed \(report.blobsRemoved) blobs (\(ByteCount.format(report.bytesRemoved))), \(report.temporaryFilesRemoved) temporary files and \(report.rootfsDirectoriesRemoved) unpacked rootfs directories; \(report.blobsKept) blobs in use"
                           + (report.versionsInUse > 0 ? ", \(report.versionsInUse) replaced or removed image versions kept for the sandboxes still running them" : ""))
            }
        }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write an image's full guest memory, zeros included, to a file.")
        @Argument(help: "The image name.") var name: String
        @Argument(help: "The output file, or - for standard output.") var file: String
        @OptionGroup var storeOptions: StoreOptions

        func run() throws {
            try Output.run {
                let image = try storeOptions.imageStore.open(name)
                try image.export(to: file)
            }
        }
    }
}
