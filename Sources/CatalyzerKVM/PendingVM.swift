import Dispatch

/// A VM being created on another thread while the caller does other work: a restore reads and
/// decodes its state and checks its rootfs meanwhile. Creating the VM, its memory slot and its
/// vCPU is the largest single cost of a restore here (about a millisecond, more on a busy host).
public final class PendingVM: @unchecked Sendable {
    private let kvm: KVM
    /// The memory the VM gets, available before the VM is.
    public let memory: GuestMemory
    private var outcome: Result<VM, Error>?
    private let created = DispatchSemaphore(value: 0)

    public init(kvm: KVM, memory: GuestMemory) {
        self.kvm = kvm
        self.memory = memory
        DispatchQueue.global(qos: .userInitiated).async { [self] in
            outcome = Result { try VM(kvm: self.kvm, memory: self.memory) }
            created.signal()
        }
    }

    /// A VM created earlier (taken from a pool): `wait()` returns it at once.
    public init(ready vm: VM) {
        kvm = vm.kvm
        memory = vm.memory
        outcome = .success(vm)
        created.signal()
    }

    /// The VM, once created; rethrows its creation's error.
    public func wait() throws -> VM {
        created.wait()
        created.signal()  // later waits return at once
        return try outcome!.get()
    }
}
