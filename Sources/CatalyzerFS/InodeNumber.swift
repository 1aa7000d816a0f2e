/// The files of one image's directory.
enum ImageFile: CaseIterable, Sendable {
    case memory, state, manifest

    var name: String {
        switch self {
        case .memory: "memory"
        case .state: "state"
        case .manifest: "manifest.json"
        }
    }

    init?(name: String) {
        guard let file = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = file
    }

    /// Position after the directory's inode number.
    var inodeOffset: UInt64 {
        switch self {
        case .memory: 1
        case .state: 2
        case .manifest: 3
        }
    }
}

/// How inode numbers are assigned. Each image *version* (name and manifest digest) seen during the
/// mount gets a slot and four consecutive numbers (directory, memory, state, manifest.json), so an
/// image replaced under the same name gets new inodes and never shares page cache with the old one.
enum InodeNumber {
    static let root: UInt64 = 1
    static let stats: UInt64 = 2
    static let firstImage: UInt64 = 16
    /// Listed for an image not opened yet. A listing's inode numbers are informational (lookup
    /// gives the real one), and 0 would make some programs skip the entry as deleted.
    static let notYetAssigned: UInt64 = .max

    static func directory(slot: Int) -> UInt64 { firstImage + UInt64(slot) * 4 }

    /// What `inode` names: a slot's directory (`file` nil) or one of its files.
    static func decode(_ inode: UInt64) -> (slot: Int, file: ImageFile?)? {
        guard inode >= firstImage else { return nil }
        let slot = Int((inode - firstImage) / 4)
        switch (inode - firstImage) % 4 {
        case 0: return (slot, nil)
        case 1: return (slot, .memory)
        case 2: return (slot, .state)
        default: return (slot, .manifest)
        }
    }
}
