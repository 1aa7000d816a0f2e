import CKVM
import Glibc

/// getrandom(2), from the host's CSPRNG: every instance, restored or forked, draws fresh bytes.
extension Task {
    func sysGetrandom(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let flags = a.uint32(2)
        guard flags & ~UInt32(GRND_NONBLOCK | GRND_RANDOM | 0x4) == 0 else { throw Errno.EINVAL }  // 0x4: GRND_INSECURE
        let count = min(try a.length(1), 32 << 20)
        var total = 0
        for buffer in try space.hostBuffers(a[0], length: count, access: .write) {
            var offset = 0
            while offset < buffer.count {
                let got = chost_getrandom(buffer.baseAddress! + offset, buffer.count - offset, 0)
                guard got > 0 else { throw Errno.lastHostError }
                offset += got
            }
            total += buffer.count
        }
        return UInt64(total)
    }
}
