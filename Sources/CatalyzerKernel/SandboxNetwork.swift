import CatalyzerKVM
import Glibc

/// The sandbox's way out: its `NetworkPolicy`, the host sockets it holds, and the monitor's log of
/// what the policy refused. Touched only from the sandbox's monitor thread, like all kernel state.
final class SandboxNetwork {
    let policy: NetworkPolicy
    /// Host sockets open now; at most `maximumHostSockets` (ENFILE beyond).
    private(set) var hostSockets = 0
    /// Each host socket's kernel buffers are capped (SO_SNDBUF/SO_RCVBUF, which Linux doubles)
    /// and charged to the sandbox's memory account at this cost, so sockets held open count
    /// against `--memory` like guest RAM does.
    static let hostBufferSize: Int32 = 64 << 10
    static let hostSocketCost = 4 * Int(hostBufferSize) + 4096
    static let maximumHostSockets = 256
    /// Where the monitor's own diagnostics go (its stderr; the daemon's log under `serve`).
    let logFD: Int32
    private var denialsLogged = 0
    static let denialLogLimit = 20

    init(policy: NetworkPolicy, logFD: Int32 = 2) {
        self.policy = policy
        self.logFD = logFD
    }

    /// The /etc/resolv.conf the guest sees when the policy names a resolver: the guest asks it on
    /// port 53 (`resolv.conf` has no port), and `hostDestination` sends to the real port.
    var resolverConfiguration: [UInt8]? {
        guard let resolver = policy.resolverStorage else { return nil }
        return Array("nameserver \(resolver.ipDescription)\noptions timeout:2 attempts:2\n".utf8)
    }

    /// The directory whose `resolv.conf` replaces the rootfs's (`Filesystem.networkFiles`).
    func generatedFiles() -> MemoryNode? {
        guard let resolverConfiguration else { return nil }
        let file = MemoryNode(content: .file(resolverConfiguration), mode: 0o444, inode: Self.resolverInode)
        return MemoryNode(content: .directory(["resolv.conf": file]), mode: 0o555, inode: Self.resolverInode + 1)
    }

    /// Inode numbers of the generated files: apart from /tmp's (counting up from 1) and /proc's.
    private static let resolverInode: UInt64 = 0x6E65_7400 << 32

    /// Where traffic the guest sends to `destination` goes on the host: the resolver's real port
    /// for DNS, the address itself otherwise.
    func hostDestination(for destination: InetAddress) -> InetAddress {
        guard let resolver = policy.resolverStorage, destination.ip == resolver.ip, destination.port == 53 else { return destination }
        return resolver
    }

    /// What the guest is told a reply came from: the inverse of `hostDestination`.
    func guestSource(for source: InetAddress) -> InetAddress {
        guard let resolver = policy.resolverStorage, source == resolver else { return source }
        var guest = source
        guest.port = 53
        return guest
    }

    /// Checks `destination` (as the host will see it); a refusal is logged and is ECONNREFUSED.
    func authorize(_ destination: InetAddress, transport: Int32, operation: String) throws(Errno) {
        switch policy.decide(destination) {
        case .allowed: return
        case .denied(let reason):
            noteDenial("refused \(operation) to \(destination.description) (\(transport == SandboxSocket.protocolTCP ? "tcp" : "udp")): \(reason)")
            throw Errno.ECONNREFUSED
        }
    }

    /// Whether a datagram from `source` may reach the guest: only from where it may send.
    func admitsDatagram(from source: InetAddress) -> Bool {
        if case .allowed = policy.decide(source) { return true }
        return false
    }

    private func noteDenial(_ line: String) {
        denialsLogged += 1
        if denialsLogged <= Self.denialLogLimit {
            writeAll(logFD, "catalyzer: network: \(line)\n")
        } else if denialsLogged == Self.denialLogLimit + 1 {
            writeAll(logFD, "catalyzer: network: further refusals in this sandbox are not logged\n")
        }
    }

    /// Reserves a host socket: a slot in the table and its buffers in `account`.
    func reserveHostSocket(account: MemoryAccount) throws(Errno) {
        guard hostSockets < Self.maximumHostSockets else { throw Errno.ENFILE }
        guard account.charge(Self.hostSocketCost) else { throw Errno.ENOBUFS }
        hostSockets += 1
    }

    func releaseHostSocket(account: MemoryAccount) {
        hostSockets -= 1
        account.release(Self.hostSocketCost)
    }
}
