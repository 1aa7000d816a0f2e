import Foundation
import Glibc

/// Facts about the machine that decide whether a test can run. A test that needs something
/// missing must fail with `requirementMessage`, never pass or skip quietly.
public enum TestEnvironment {
    public static var isRoot: Bool { geteuid() == 0 }
    public static var hasKVM: Bool { access("/dev/kvm", R_OK | W_OK) == 0 }
    public static var hasFUSE: Bool { access("/dev/fuse", R_OK | W_OK) == 0 }

    /// Why a test that needs `what` cannot run here, for a failing expectation's message.
    public static func requirementMessage(_ what: String) -> String {
        "REQUIREMENT MISSING: this test needs \(what); run the suite as root on a machine with /dev/kvm and /dev/fuse (as CI does: `bash .ci/run`)"
    }
}

/// A fresh directory under the system temporary directory, removed with `remove()`.
public struct TemporaryDirectory: Sendable {
    public let path: String

    public init(_ label: String = "test") throws {
        let template = NSTemporaryDirectory() + "/catalyzer-\(label)-XXXXXX"
        var bytes = Array(template.utf8CString)
        guard let made = mkdtemp(&bytes) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: template])
        }
        path = String(cString: made)
    }

    public func file(_ name: String) -> String { path + "/" + name }

    public func remove() { try? FileManager.default.removeItem(atPath: path) }
}
