import CatalyzerImage

/// The files of one image's directory (the layout the monitor reads).
typealias ImageFile = ImageMountFile

extension ImageMountFile {
    /// Position after the directory's inode number.
    var inodeOffset: UInt64 {
        switch self {
        case .memory: 1
        case .state: 2
        case .manifest: 3
        case .workingSet: 4
        }
    }
}

/// How inode numbers are assigned. Each image *version* (name and manifest digest) seen during the
/// mount gets a slot and five consecutive numbers (directory, memory, state, manifest.json,
/// working-set), so an
/// image replaced under the same name gets new inodes and never shares page cache with the old one.
enum InodeNumber {
    static let root: UInt64 = 1
    static let stats: UInt64 = 2
    static let firstImage: UInt64 = 16
    /// Listed for an image not opened yet. A listing's inode numbers are informational (lookup
    /// gives the real one), and 0 would make some programs skip the entry as deleted.
    static let notYetAssigned: UInt64 = .max

    static func directory(slot: Int) -> UInt64 { firstImage + UInt64(slot) * inodesPerImage }
    static let inodesPerImage: UInt64 = 5

    /// What `inode` names: a slot's directory (`file` nil) or one of its files.
    static func decode(_ inode: UInt64) -> (slot: Int, file: ImageFile?)? {
        guard inode >= firstImage else { return nil }
        let slot = Int((inode - firstImage) / inodesPerImage)
        switch (inode - firstImage) % inodesPerImage {
        case 0: return (slot, nil)
        case 1: return (slot, .memory)
        case 2: return (slot, .state)
        case 3: return (slot, .manifest)
        default: return (slot, .workingSet)
        }
    }
}
