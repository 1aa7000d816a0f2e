import CatalyzerKVM
import Glibc
import Synchronization

/// Signals sent to a sandbox's first process from outside it — an OCI runtime's `kill`, a
/// SIGTERM to the monitor forwarded — posted from any thread and delivered by the sandbox's run
/// loop, as `kill` from a process outside the sandbox would (SI_USER, sender pid 0).
///
/// Posting sets the signal's bit, writes a byte to the inbox's pipe (the run loop polls it when
/// every task waits, so a post never sleeps through) and kicks the vCPU out of the guest.
public final class HostSignalInbox: Sendable {
    /// Signals posted and not yet delivered, one bit per signal (bit n-1 for signal n).
    private let pending = Atomic<UInt64>(0)
    /// The pipe's read end, readable while signals are pending (drained by `take()`), and its write end.
    let wakeDescriptor: Int32
    private let wakeWriter: Int32
    private let exitRequester: ExitRequester

    /// Without a pipe from the host (fds exhausted), posts only kick; the descriptors are then -1.
    init(exitRequester: ExitRequester) {
        var ends: [Int32] = [-1, -1]
        if pipe(&ends) == 0 {
            for end in ends {
                _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
                _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            }
        } else {
            ends = [-1, -1]
        }
        wakeDescriptor = ends[0]
        wakeWriter = ends[1]
        self.exitRequester = exitRequester
    }

    deinit {
        if wakeDescriptor >= 0 { close(wakeDescriptor) }
        if wakeWriter >= 0 { close(wakeWriter) }
    }

    /// Queues `signal` (1...64) for the sandbox's first process.
    public func post(_ signal: Int32) {
        guard (1...64).contains(signal) else { return }
        pending.bitwiseOr(UInt64(1) << UInt64(signal - 1), ordering: .releasing)
        var byte: UInt8 = 1
        if wakeWriter >= 0 { _ = write(wakeWriter, &byte, 1) }  // a full pipe is already readable
        exitRequester.preempt()
    }

    /// The signals posted since the last call, lowest first.
    func take() -> [Int32] {
        var drained = [UInt8](repeating: 0, count: 256)
        if wakeDescriptor >= 0 { while read(wakeDescriptor, &drained, drained.count) > 0 {} }
        let bits = pending.exchange(0, ordering: .acquiring)
        return (1...64).filter { bits & (UInt64(1) << UInt64($0 - 1)) != 0 }.map { Int32($0) }
    }

    var hasPending: Bool { pending.load(ordering: .relaxed) != 0 }
}
