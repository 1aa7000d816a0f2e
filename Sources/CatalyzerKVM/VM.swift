import CKVM
import Glibc

/// A KVM virtual machine with one guest-RAM slot at guest-physical 0 and one vCPU.
public final class VM {
    public let kvm: KVM
    public let fd: Int32
    public let memory: GuestMemory
    public let vcpu: VCPU

    /// `exitRequester`: see `VCPU`; pass the sandbox's when this VM runs a forked process.
    public init(kvm: KVM, memory: GuestMemory, exitRequester: ExitRequester? = nil) throws {
        let fd = try check("KVM_CREATE_VM") { ckvm_create_vm(kvm.fd) }
        do {
            try check("KVM_SET_USER_MEMORY_REGION") {
                ckvm_set_user_memory_region(fd, 0, 0, 0, UInt64(memory.size), UInt64(UInt(bitPattern: memory.base)))
            }
            for (index, region) in memory.attachedRegions.enumerated() {
                try GuestMemory.register(region, slot: UInt32(index + 1), vmFD: fd)
            }
            self.vcpu = try VCPU(vmFD: fd, id: 0, runSize: kvm.vcpuMmapSize, exitRequester: exitRequester)
        } catch {
            close(fd)
            throw error
        }
        self.kvm = kvm
        self.fd = fd
        self.memory = memory
        memory.vmFD = fd
    }

    deinit {
        if memory.vmFD == fd { memory.vmFD = -1 }
        close(fd)
    }
}
