import CLinux
import Foundation
import Glibc

/// The local image store: an OCI image layout directory.
///
/// ```
/// STORE/oci-layout          {"imageLayoutVersion": "1.0.0"}
/// STORE/index.json          names → manifest descriptors (annotation org.opencontainers.image.ref.name)
/// STORE/blobs/sha256/HEX    manifests, configs, state blobs and chunk blobs, by digest
/// STORE/ingest/             temporary files of writes in progress (removed by gc)
/// STORE/gc.lock, index.lock see `StoreLock`
/// ```
/// Blobs are content-addressed, so identical chunks of any two images are stored once. Publishing
/// is ordered (blobs, then the manifest, then the name in `index.json`) and each step is an atomic
/// rename, so a name never points at a partial image, whatever fails and when.
public struct ImageStore: Sendable {
    public let root: String

    /// The default store: `$CATALYZER_STORE`, else `/var/lib/catalyzer`.
    public static var defaultRoot: String {
        ProcessInfo.processInfo.environment["CATALYZER_STORE"].flatMap { $0.isEmpty ? nil : $0 }
            ?? "/var/lib/catalyzer"
    }

    public init(root: String) {
        self.root = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
    }

    var layoutPath: String { root + "/oci-layout" }
    public var indexPath: String { root + "/index.json" }
    var blobsDirectory: String { root + "/blobs/sha256" }
    var ingestDirectory: String { root + "/ingest" }
    var gcLockPath: String { root + "/gc.lock" }
    var indexLockPath: String { root + "/index.lock" }

    public func blobPath(_ digest: Digest) -> String { blobsDirectory + "/" + digest.hex }

    /// Whether `root` holds an image layout at all.
    public var exists: Bool { FileIO.exists(layoutPath) }

    /// Whether this user is kept out of the store by its permissions: the layout marker is
    /// there, but cannot be reached. Told apart from "no store" so that the error says which.
    public var isPrivateToAnotherUser: Bool {
        guard access(layoutPath, F_OK) != 0, errno == EACCES else { return false }
        return true
    }

    /// Image names: a letter or digit, then letters, digits, `.`, `_`, `-`; at most 128. Names
    /// become directory names on catalyzerfs, so `/` and a leading `.` are excluded.
    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.utf8.first, name.utf8.count <= 128 else { return false }
        func isAlnum(_ c: UInt8) -> Bool { (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) }
        return isAlnum(first) && name.utf8.allSatisfy { isAlnum($0) || $0 == 46 || $0 == 95 || $0 == 45 }
    }

    // MARK: Layout

    /// Mode of every file the store writes: owner only, like the store directory itself.
    static let fileMode: mode_t = 0o600

    /// Why other users can read the store's images, or nil when they cannot. Every image holds a
    /// function's whole memory at its ready point, secrets included (an API key passed with
    /// `--env`), so a store that others can enter is a leak even if it was made by an older
    /// catalyzer that wrote world-readable blobs. Only the root directory's mode is looked at:
    /// without search permission on it, nothing inside can be reached.
    public var privacyProblem: String? {
        var info = stat()
        guard stat(root, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else { return nil }
        let mode = info.st_mode & 0o777
        guard mode & 0o055 != 0 else { return nil }
        let who = mode & 0o005 != 0 ? "every user on this host" : "the members of its group"
        return "the image store \(root) can be read by \(who) (mode \(String(mode, radix: 8))), and its images hold the memory of functions, secrets included; make it private with `chmod -R go= \(root)`"
    }

    /// Creates the layout if it is missing and checks that the store can be written.
    func prepareForWriting() throws(ImageError) {
        if !exists {
            // Private to its owner: blobs hold function memory, and with it whatever secrets a
            // function held at its ready point (see `privacyProblem`).
            for dir in [root, root + "/blobs", blobsDirectory, ingestDirectory] {
                do { try FileIO.makeDirectories(dir, mode: 0o700) } catch {
                    if case let .io(op, path, code) = error { throw ImageError.writing(op, path, errno: code, store: root) }
                    throw error
                }
            }
            try writeAtomically(Self.encode(OCIIndex()), to: indexPath)
            try writeAtomically(Self.encode(OCILayout()), to: layoutPath)
        } else {
            try checkLayout()
            if !FileIO.exists(ingestDirectory) && mkdir(ingestDirectory, 0o700) != 0 && errno != EEXIST {
                throw ImageError.writing("mkdir", ingestDirectory, errno: errno, store: root)
            }
        }
        if access(ingestDirectory, W_OK) != 0 {
            throw ImageError.writing("access", ingestDirectory, errno: errno, store: root)
        }
    }

    /// Fails unless `root` holds an OCI image layout of a version we read.
    func checkLayout() throws(ImageError) {
        let bytes: [UInt8]
        do { bytes = try FileIO.readFile(layoutPath, limit: 4096) } catch {
            throw .invalidStore(path: root, detail: "\(layoutPath) is missing or unreadable (\(error))")
        }
        guard let layout = try? JSONDecoder().decode(OCILayout.self, from: Data(bytes)),
              layout.imageLayoutVersion == "1.0.0" else {
            throw .invalidStore(path: root, detail: "\(layoutPath) is not an OCI layout marker of version 1.0.0")
        }
    }

    // MARK: Names

    /// The store's index. A store that does not exist yet is empty.
    public func index() throws(ImageError) -> OCIIndex {
        guard exists else {
            if isPrivateToAnotherUser { throw .storeNotReadable(path: root) }
            return OCIIndex()
        }
        try checkLayout()
        let bytes = try FileIO.readFile(indexPath, limit: 64 << 20)
        do {
            return try JSONDecoder().decode(OCIIndex.self, from: Data(bytes))
        } catch {
            throw .invalidStore(path: root, detail: "index.json does not parse: \(DecodingProblem(error))")
        }
    }

    /// The named images, sorted by name. Only entries that carry a valid name are images.
    public func names() throws(ImageError) -> [String] {
        try index().manifests.compactMap { $0.annotations?[OCIIndex.refNameAnnotation] }
            .filter(Self.isValidName).sorted()
    }

    /// The manifest descriptor that `name` points at.
    public func manifestDescriptor(named name: String) throws(ImageError) -> Descriptor {
        guard Self.isValidName(name) else { throw .invalidName(name) }
        guard let descriptor = try index().manifests.last(where: {
            $0.annotations?[OCIIndex.refNameAnnotation] == name
        }) else { throw .imageNotFound(name: name, store: root) }
        return descriptor
    }

    /// Opens the named image: reads and verifies its manifest and config.
    public func open(_ name: String) throws(ImageError) -> Image {
        try Image(store: self, name: name, manifestDescriptor: manifestDescriptor(named: name))
    }

    /// Points `name` at `manifest`, replacing an earlier image of that name. This is the single
    /// step that makes an image visible; everything it refers to must already be stored.
    func publish(name: String, manifest: Descriptor) throws(ImageError) {
        let lock = try StoreLock(path: indexLockPath, mode: .exclusive, store: root)
        defer { withExtendedLifetime(lock) {} }
        var index = try index()
        index.manifests.removeAll { $0.annotations?[OCIIndex.refNameAnnotation] == name }
        var named = manifest
        named.annotations = (named.annotations ?? [:]).merging([OCIIndex.refNameAnnotation: name]) { $1 }
        index.manifests.append(named)
        try writeAtomically(Self.encode(index), to: indexPath)
    }

    /// Removes the name. Its blobs stay until `gc`, since other images may share them.
    public func remove(_ name: String) throws(ImageError) {
        _ = try manifestDescriptor(named: name)
        try prepareForWriting()
        let gcLock = try StoreLock(path: gcLockPath, mode: .shared, store: root)
        defer { withExtendedLifetime(gcLock) {} }
        let lock = try StoreLock(path: indexLockPath, mode: .exclusive, store: root)
        defer { withExtendedLifetime(lock) {} }
        var index = try index()
        let before = index.manifests.count
        index.manifests.removeAll { $0.annotations?[OCIIndex.refNameAnnotation] == name }
        guard index.manifests.count < before else { throw .imageNotFound(name: name, store: root) }
        try writeAtomically(Self.encode(index), to: indexPath)
    }

    // MARK: Blobs

    /// Stores `bytes` as a blob and returns its digest. An existing blob of the same digest and
    /// size is kept (that is the deduplication); the new one is written to `ingest/` and renamed
    /// into place, so a blob file is always complete.
    @discardableResult
    func storeBlob(_ bytes: UnsafeRawBufferPointer) throws(ImageError) -> (digest: Digest, written: Bool) {
        let digest = Digest(of: bytes)
        let path = blobPath(digest)
        var info = stat()
        if stat(path, &info) == 0 && Int64(info.st_size) == Int64(bytes.count) {
            return (digest, false)
        }
        try writeAtomically(bytes, to: path, syncData: false)
        return (digest, true)
    }

    func storeBlob(_ bytes: [UInt8]) throws(ImageError) -> (digest: Digest, written: Bool) {
        try bytes.withUnsafeBytes { raw in Result { () throws(ImageError) in try storeBlob(raw) } }.get()
    }

    /// Writes `bytes` to a temporary file in `ingest/` and renames it to `path`. With `syncData`
    /// the file (and then its directory) is flushed first; blob writes skip that and are flushed
    /// all at once by `syncAll()` before the image is named.
    func writeAtomically(_ bytes: UnsafeRawBufferPointer, to path: String, syncData: Bool = true) throws(ImageError) {
        let directory = FileIO.exists(ingestDirectory) ? ingestDirectory : root
        let temporary = directory + "/tmp-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        let fd = Glibc.open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, Self.fileMode)
        guard fd >= 0 else { throw ImageError.writing("create", temporary, errno: errno, store: root) }
        var failure: ImageError?
        do throws(ImageError) {
            try FileIO.write(fd, bytes, path: temporary)
            if syncData && fsync(fd) != 0 { throw ImageError.io(operation: "fsync", path: temporary, errno: errno) }
        } catch {
            if case let .io(op, p, code) = error { failure = ImageError.writing(op, p, errno: code, store: root) }
            else { failure = error }
        }
        if close(fd) != 0 && failure == nil { failure = ImageError.writing("close", temporary, errno: errno, store: root) }
        if failure == nil && rename(temporary, path) != 0 {
            failure = ImageError.writing("rename", path, errno: errno, store: root)
        }
        if let failure {
            unlink(temporary)
            throw failure
        }
        if syncData { FileIO.syncDirectory(String(path[..<path.lastIndex(of: "/")!])) }
    }

    func writeAtomically(_ bytes: [UInt8], to path: String) throws(ImageError) {
        try bytes.withUnsafeBytes { raw in Result { () throws(ImageError) in try writeAtomically(raw, to: path) } }.get()
    }

    /// Flushes everything written to the store's filesystem, so that blobs are durable before
    /// a name points at them.
    func syncAll() throws(ImageError) {
        let fd = try FileIO.open(root, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        if clinux_syncfs(fd) != 0 { throw ImageError.writing("syncfs", root, errno: errno, store: root) }
    }

    /// Reads a blob and checks its size and digest. `image` and `role` only label errors.
    public func readVerifiedBlob(_ digest: Digest, size: Int64, image: String, role: String) throws(ImageError) -> [UInt8] {
        let path = blobPath(digest)
        let fd: Int32, actual: Int64
        do { (fd, actual) = try FileIO.openRegular(path) } catch {
            switch error {
            case let .notRegular(kind):
                throw .blobNotRegular(image: image, digest: digest, role: role, path: path, kind: kind)
            case let .io(.io(_, _, code)) where code == ENOENT:
                throw .blobMissing(image: image, digest: digest, role: role, path: path)
            case let .io(failure):
                throw failure
            }
        }
        defer { close(fd) }
        // The size check comes before the allocation, so a descriptor's size (hostile input) never
        // sizes a buffer larger than the file really is.
        guard actual == size else {
            throw .blobSizeMismatch(image: image, digest: digest, role: role, expected: size, actual: actual)
        }
        var bytes = [UInt8](repeating: 0, count: Int(size))
        let count = try bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(ImageError) in try FileIO.read(fd, into: buffer, path: path) }
        }.get()
        guard count == Int(size) else {
            throw .blobSizeMismatch(image: image, digest: digest, role: role, expected: size, actual: Int64(count))
        }
        let hashed = Digest(of: bytes)
        guard hashed == digest else {
            throw .blobCorrupt(image: image, digest: digest, role: role, actualDigest: hashed)
        }
        return bytes
    }

    static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding these plain structs cannot fail.
        return Array(try! encoder.encode(value))
    }
}

/// A readable account of a `DecodingError`: where in the document, and what was wrong.
struct DecodingProblem: CustomStringConvertible {
    let error: Error
    init(_ error: Error) { self.error = error }

    var description: String {
        func path(_ codingPath: [CodingKey]) -> String {
            let text = codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return text.isEmpty ? "the top level" : String(text.drop(while: { $0 == "." }))
        }
        switch error as? DecodingError {
        case let .dataCorrupted(context)?:
            return context.codingPath.isEmpty ? "not valid JSON" : "at \(path(context.codingPath)): \(context.debugDescription)"
        case let .keyNotFound(key, context)?:
            return "at \(path(context.codingPath + [key])): required field is missing"
        case let .typeMismatch(_, context)?, let .valueNotFound(_, context)?:
            return "at \(path(context.codingPath)): \(context.debugDescription)"
        default:
            return String(describing: error)
        }
    }
}
