import CatalyzerImage

/// What a push or pull reports as it goes: the CLI draws a progress bar from these, or prints
/// each (but `bytes`) as a line of JSON.
public enum TransferEvent: Sendable {
    /// The transfer is planned: `blobs` blobs of `bytes` bytes in all (manifest not counted).
    case plan(operation: Operation, reference: String, blobs: Int, bytes: Int64)
    /// One blob is settled.
    case blob(digest: Digest, role: String, size: Int64, action: BlobAction)
    /// `count` more bytes went over the wire.
    case bytes(Int64)
    /// A request failed transiently and is tried again after `delay` seconds.
    case retry(operation: String, attempt: Int, delay: Double, reason: String)

    public enum Operation: String, Sendable, Codable { case push, pull }
}

/// What happened to one blob.
public enum BlobAction: String, Sendable, Codable {
    /// Push: the registry had it. Pull: the local store had it.
    case existing
    /// Push: mounted from another repository of the registry, no bytes sent.
    case mounted
    case uploaded
    case downloaded
}
