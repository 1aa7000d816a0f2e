/// The sandbox's processes, shared by all of them (a pid namespace): pid allocation and the exit
/// statuses of children not yet waited for (zombies).
final class ProcessTable {
    var nextPID: Int32 = 1
    /// Exited children by pid: their parent and their wait status (as wait4 reports it).
    var zombies: [Int32: (parent: Int32, status: Int32)] = [:]

    func allocatePID() -> Int32 {
        defer { nextPID += 1 }
        return nextPID
    }

    func recordExit(pid: Int32, parent: Int32, exit: SandboxExit) {
        let status: Int32 = switch exit {
        case .exited(let code): (code & 0xFF) << 8
        case .killed(let signal, _): signal & 0x7F
        case .timedOut, .readyPoint: 9  // SIGKILL
        }
        zombies[pid] = (parent, status)
    }

    /// Removes and returns an exited child of `parent` (a specific one when `pid` > 0).
    func reap(parent: Int32, pid: Int32) -> (pid: Int32, status: Int32)? {
        let match = zombies.filter { $0.value.parent == parent && (pid <= 0 || $0.key == pid) }.keys.min()
        guard let match, let zombie = zombies.removeValue(forKey: match) else { return nil }
        return (match, zombie.status)
    }
}
