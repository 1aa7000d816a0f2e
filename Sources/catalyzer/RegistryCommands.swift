import ArgumentParser
import CatalyzerImage
import CatalyzerRegistry
import Foundation

/// Options shared by `push` and `pull`: how to reach and authenticate to the registry, and how
/// to report progress.
struct RegistryConnectionOptions: ParsableArguments {
    @Flag(help: "Speak plain HTTP to the registry (default: HTTPS).") var insecure = false
    @Option(help: "A PEM file of CA certificates to trust in addition to the system's.") var caFile: String?
    @Option(help: "User name for the registry; the password is read from standard input (--password-stdin).") var username: String?
    @Flag(help: "Read the password from standard input (one line).") var passwordStdin = false
    @Option(help: "Blob transfers to run at once.") var jobs = 4
    @Flag(help: "Print one JSON event per line (the default when stderr is not a terminal).") var json = false
    @Flag(name: [.customShort("q"), .long], help: "Print only the manifest digest.") var quiet = false

    func validate() throws {
        if passwordStdin && username == nil { throw ValidationError("--password-stdin needs --username") }
        if username != nil && !passwordStdin { throw ValidationError("--username needs --password-stdin (passwords are never taken as arguments)") }
        if json && quiet { throw ValidationError("--json and --quiet exclude each other") }
        guard (1...64).contains(jobs) else { throw ValidationError("--jobs must be between 1 and 64") }
    }

    /// Options for `registry`: credentials from the flags, else from the docker config file.
    func options(for registry: String) throws -> RegistryOptions {
        var options = RegistryOptions()
        options.insecure = insecure
        options.caFile = caFile
        options.parallelism = jobs
        if let username, passwordStdin {
            let input = FileHandle.standardInput.readDataToEndOfFile()
            var password = String(decoding: input, as: UTF8.self)
            while password.hasSuffix("\n") || password.hasSuffix("\r") { password.removeLast() }
            guard !password.isEmpty else { throw RegistryError.credentials("--password-stdin read an empty password from standard input") }
            options.credentials = Credentials(username: username, password: password)
        } else {
            options.credentials = try Credentials.fromDockerConfig(registry: registry)
        }
        return options
    }
}

/// A push or pull that failed on the way: nothing partial is published, and a rerun moves only
/// what is still missing; the message says so.
struct InterruptedTransfer: Error, CustomStringConvertible {
    let error: Error
    var description: String {
        "\(error); nothing partial was published, and a rerun transfers only what is still missing"
    }

    static func wrap(_ error: Error) -> Error {
        switch error as? RegistryError {
        case .unreachable?, .unexpectedResponse?: InterruptedTransfer(error: error)
        default: error
        }
    }
}

/// `catalyzer push NAME REGISTRY/REPOSITORY[:TAG]`.
struct PushCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push",
        abstract: "Push an image to an OCI registry.",
        discussion: """
            Blobs the registry has are skipped (HEAD); blobs another repository of the same registry \
            holds (one this store pushed to or pulled from) are mounted, not uploaded; the rest are \
            uploaded in parallel, with retries and backoff on 5xx and broken connections. The manifest \
            goes last, so the tag never names a partial image, and a rerun after a failure uploads \
            only what is still missing. Credentials come from --username/--password-stdin or from \
            ~/.docker/config.json (`docker login`, `skopeo login`).
            """)

    @Argument(help: "The image name in the local store.") var name: String
    @Argument(help: "REGISTRY/REPOSITORY[:TAG] (tag defaults to latest).") var reference: String
    @OptionGroup var connection: RegistryConnectionOptions
    @OptionGroup var storeOptions: StoreOptions

    func run() async throws {
        try await Output.runAsync {
            let target = try ImageReference(parsing: reference)
            let options = try connection.options(for: target.registry)
            let progress = TransferProgress(json: connection.json, quiet: connection.quiet)
            let report: PushReport
            do {
                report = try await Registry.push(name, store: storeOptions.imageStore, to: target, options: options, events: progress.handle)
            } catch {
                progress.finish()
                throw InterruptedTransfer.wrap(error)
            }
            progress.finish()
            switch progress.mode {
            case .quiet:
                Output.out(report.digest.description)
            case .json:
                progress.done(["operation": "push", "reference": report.reference, "digest": report.digest.description, "blobs": report.blobs,
                               "uploaded": report.uploaded, "mounted": report.mounted, "existing": report.existing,
                               "bytes": report.bytesUploaded, "seconds": report.seconds])
            case .bar:
                Output.out("""
                    pushed \(name) to \(report.reference) (\(report.digest))
                      \(report.blobs) blobs: \(report.uploaded) uploaded (\(ByteCount.format(report.bytesUploaded))), \(report.mounted) mounted, \(report.existing) already there; \(String(format: "%.2f", report.seconds)) s
                    """)
            }
        }
    }
}

/// `catalyzer pull REGISTRY/REPOSITORY[:TAG|@DIGEST] [--name NAME]`.
struct PullCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pull",
        abstract: "Pull an image from an OCI registry into the local store.",
        discussion: """
            The manifest and config are checked first; then every blob the store lacks is downloaded \
            in parallel and verified against its digest before it is stored. The image is named only \
            when all of it is stored: a failed pull leaves no image (and a rerun downloads only what \
            is still missing).
            """)

    @Argument(help: "REGISTRY/REPOSITORY[:TAG] or REGISTRY/REPOSITORY@sha256:DIGEST.") var reference: String
    @Option(help: "The local image name (default: the repository's last component, plus -TAG unless the tag is latest).") var name: String?
    @Flag(help: "Fetch only the manifest, config, state, rootfs and working set; catalyzerfs fetches other chunks from the registry on first touch.") var lazy = false
    @OptionGroup var connection: RegistryConnectionOptions
    @OptionGroup var storeOptions: StoreOptions

    func run() async throws {
        try await Output.runAsync {
            let source = try ImageReference(parsing: reference)
            let options = try connection.options(for: source.registry)
            let progress = TransferProgress(json: connection.json, quiet: connection.quiet)
            let report: PullReport
            do {
                report = try await Registry.pull(source, as: name, store: storeOptions.imageStore, options: options, lazy: lazy, events: progress.handle)
            } catch {
                progress.finish()
                throw InterruptedTransfer.wrap(error)
            }
            progress.finish()
            switch progress.mode {
            case .quiet:
                Output.out(report.digest.description)
            case .json:
                progress.done(["operation": "pull", "reference": report.reference, "name": report.name, "digest": report.digest.description,
                               "blobs": report.blobs, "downloaded": report.downloaded, "existing": report.existing,
                               "bytes": report.bytesDownloaded, "remote": report.remote, "seconds": report.seconds])
            case .bar:
                Output.out("""
                    pulled \(report.reference) as \(report.name) (\(report.digest))
                      \(report.blobs) blobs: \(report.downloaded) downloaded (\(ByteCount.format(report.bytesDownloaded))), \(report.existing) already in the store\(report.remote > 0 ? ", \(report.remote) chunk blobs left in the registry (lazy)" : ""); \(String(format: "%.2f", report.seconds)) s
                    """)
            }
        }
    }
}
