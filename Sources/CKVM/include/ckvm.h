// CKVM: static inline wrappers around the KVM ioctls and kvm_run unions, so Swift sees plain functions.
// Every wrapper returns the ioctl result (-1 with errno set on failure); no logic lives here.
#pragma once
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <linux/kvm.h>

// MARK: host memory (glibc declares these only under _GNU_SOURCE)

int memfd_create(const char *name, unsigned int flags);
int fallocate(int fd, int mode, off_t offset, off_t len);
static inline int ckvm_memfd_create(const char *name) { return memfd_create(name, 1U /* MFD_CLOEXEC */); }
/// Frees the byte range of `fd` (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE); it then reads as zero.
static inline int ckvm_punch_hole(int fd, off_t offset, off_t length) { return fallocate(fd, 0x02 | 0x01, offset, length); }

// MARK: system fd

static inline int ckvm_get_api_version(int kvm) { return ioctl(kvm, KVM_GET_API_VERSION, 0); }
static inline int ckvm_check_extension(int fd, int cap) { return ioctl(fd, KVM_CHECK_EXTENSION, cap); }
static inline int ckvm_create_vm(int kvm) { return ioctl(kvm, KVM_CREATE_VM, 0); }
static inline int ckvm_get_vcpu_mmap_size(int kvm) { return ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0); }

/// Fills `entries` (capacity `capacity`) with KVM_GET_SUPPORTED_CPUID; returns the entry count or -1.
static inline int ckvm_get_supported_cpuid(int kvm, struct kvm_cpuid_entry2 *entries, uint32_t capacity) {
    size_t size = sizeof(struct kvm_cpuid2) + capacity * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *cpuid = calloc(1, size);
    if (!cpuid) { errno = ENOMEM; return -1; }
    cpuid->nent = capacity;
    int r = ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid);
    if (r == 0) {
        memcpy(entries, cpuid->entries, cpuid->nent * sizeof(struct kvm_cpuid_entry2));
        r = (int)cpuid->nent;
    }
    free(cpuid);
    return r;
}

// MARK: VM fd

static inline int ckvm_create_vcpu(int vm, unsigned long id) { return ioctl(vm, KVM_CREATE_VCPU, id); }
static inline int ckvm_set_user_memory_region(int vm, uint32_t slot, uint32_t flags, uint64_t guest_phys,
                                              uint64_t size, uint64_t host_addr) {
    struct kvm_userspace_memory_region region = {
        .slot = slot, .flags = flags, .guest_phys_addr = guest_phys,
        .memory_size = size, .userspace_addr = host_addr,
    };
    return ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region);
}

// MARK: vCPU fd

static inline int ckvm_run(int vcpu) { return ioctl(vcpu, KVM_RUN, 0); }
static inline int ckvm_get_regs(int vcpu, struct kvm_regs *regs) { return ioctl(vcpu, KVM_GET_REGS, regs); }
static inline int ckvm_set_regs(int vcpu, const struct kvm_regs *regs) { return ioctl(vcpu, KVM_SET_REGS, regs); }
static inline int ckvm_get_sregs(int vcpu, struct kvm_sregs *sregs) { return ioctl(vcpu, KVM_GET_SREGS, sregs); }
static inline int ckvm_set_sregs(int vcpu, const struct kvm_sregs *sregs) { return ioctl(vcpu, KVM_SET_SREGS, sregs); }

static inline int ckvm_set_cpuid2(int vcpu, const struct kvm_cpuid_entry2 *entries, uint32_t count) {
    size_t size = sizeof(struct kvm_cpuid2) + count * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *cpuid = calloc(1, size);
    if (!cpuid) { errno = ENOMEM; return -1; }
    cpuid->nent = count;
    memcpy(cpuid->entries, entries, count * sizeof(struct kvm_cpuid_entry2));
    int r = ioctl(vcpu, KVM_SET_CPUID2, cpuid);
    free(cpuid);
    return r;
}

/// Sets one MSR; returns 0 on success, -1 otherwise (KVM_SET_MSRS reports the count it set).
static inline int ckvm_set_msr(int vcpu, uint32_t index, uint64_t value) {
    uint64_t buffer[(sizeof(struct kvm_msrs) + sizeof(struct kvm_msr_entry)) / sizeof(uint64_t)];
    memset(buffer, 0, sizeof(buffer));
    struct kvm_msrs *msrs = (struct kvm_msrs *)buffer;
    msrs->nmsrs = 1;
    msrs->entries[0].index = index;
    msrs->entries[0].data = value;
    int r = ioctl(vcpu, KVM_SET_MSRS, msrs);
    if (r == 1) return 0;
    if (r >= 0) errno = EINVAL;
    return -1;
}

/// Reads one MSR into `*value`; returns 0 on success, -1 otherwise.
static inline int ckvm_get_msr(int vcpu, uint32_t index, uint64_t *value) {
    uint64_t buffer[(sizeof(struct kvm_msrs) + sizeof(struct kvm_msr_entry)) / sizeof(uint64_t)];
    memset(buffer, 0, sizeof(buffer));
    struct kvm_msrs *msrs = (struct kvm_msrs *)buffer;
    msrs->nmsrs = 1;
    msrs->entries[0].index = index;
    int r = ioctl(vcpu, KVM_GET_MSRS, msrs);
    if (r == 1) { *value = msrs->entries[0].data; return 0; }
    if (r >= 0) errno = EINVAL;
    return -1;
}

/// Sets XCR0 (the only XCR); returns the ioctl result.
static inline int ckvm_set_xcr0(int vcpu, uint64_t value) {
    struct kvm_xcrs xcrs;
    memset(&xcrs, 0, sizeof(xcrs));
    xcrs.nr_xcrs = 1;
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = value;
    return ioctl(vcpu, KVM_SET_XCRS, &xcrs);
}

/// Reads XCR0 into `*value`; returns the ioctl result.
static inline int ckvm_get_xcr0(int vcpu, uint64_t *value) {
    struct kvm_xcrs xcrs;
    memset(&xcrs, 0, sizeof(xcrs));
    int r = ioctl(vcpu, KVM_GET_XCRS, &xcrs);
    if (r != 0) return r;
    *value = 0;
    for (uint32_t i = 0; i < xcrs.nr_xcrs; i++) if (xcrs.xcrs[i].xcr == 0) *value = xcrs.xcrs[i].value;
    return 0;
}

/// Size of the legacy XSAVE area KVM_GET_XSAVE fills: x87, SSE, AVX and AVX-512 state fit in it.
static const int ckvm_xsave_size = (int)sizeof(struct kvm_xsave);
/// Copies the vCPU's FPU/SSE/AVX state (the XSAVE area) into `buffer` of `ckvm_xsave_size` bytes.
static inline int ckvm_get_xsave(int vcpu, void *buffer) { return ioctl(vcpu, KVM_GET_XSAVE, buffer); }
static inline int ckvm_set_xsave(int vcpu, const void *buffer) { return ioctl(vcpu, KVM_SET_XSAVE, buffer); }

// MARK: kvm_run accessors (the unions are anonymous, which Swift imports poorly)

static inline uint32_t ckvm_run_exit_reason(const struct kvm_run *run) { return run->exit_reason; }
static inline void ckvm_run_set_immediate_exit(struct kvm_run *run, uint8_t value) {
    __atomic_store_n(&run->immediate_exit, value, __ATOMIC_SEQ_CST);
}
static inline uint16_t ckvm_run_io_port(const struct kvm_run *run) { return run->io.port; }
static inline uint8_t ckvm_run_io_direction(const struct kvm_run *run) { return run->io.direction; }
static inline uint64_t ckvm_run_mmio_address(const struct kvm_run *run) { return run->mmio.phys_addr; }
static inline uint8_t ckvm_run_mmio_is_write(const struct kvm_run *run) { return run->mmio.is_write; }
static inline uint32_t ckvm_run_internal_suberror(const struct kvm_run *run) { return run->internal.suberror; }
static inline uint64_t ckvm_run_fail_entry_reason(const struct kvm_run *run) {
    return run->fail_entry.hardware_entry_failure_reason;
}

/// The sync-regs area: when KVM_CAP_SYNC_REGS is available, registers travel in kvm_run, saving ioctls.
static inline struct kvm_regs *ckvm_run_sync_regs(struct kvm_run *run) { return &run->s.regs.regs; }
static inline struct kvm_sregs *ckvm_run_sync_sregs(struct kvm_run *run) { return &run->s.regs.sregs; }
static inline void ckvm_run_set_sync_valid(struct kvm_run *run, uint64_t mask) { run->kvm_valid_regs = mask; }
static inline void ckvm_run_set_sync_dirty(struct kvm_run *run, uint64_t mask) { run->kvm_dirty_regs = mask; }

// MARK: binary statistics (KVM_GET_STATS_FD)

/// A read-only fd of the vCPU's (or VM's) statistics: a header, descriptors, then u64 values.
static inline int ckvm_get_stats_fd(int fd) { return ioctl(fd, KVM_GET_STATS_FD, 0); }
static const int ckvm_stats_header_size = (int)sizeof(struct kvm_stats_header);
static const int ckvm_stats_desc_size = (int)sizeof(struct kvm_stats_desc);
static inline uint32_t ckvm_stats_header_name_size(const struct kvm_stats_header *h) { return h->name_size; }
static inline uint32_t ckvm_stats_header_count(const struct kvm_stats_header *h) { return h->num_desc; }
static inline uint32_t ckvm_stats_header_desc_offset(const struct kvm_stats_header *h) { return h->desc_offset; }
static inline uint32_t ckvm_stats_header_data_offset(const struct kvm_stats_header *h) { return h->data_offset; }
static inline uint32_t ckvm_stats_desc_offset(const struct kvm_stats_desc *d) { return d->offset; }
static inline uint16_t ckvm_stats_desc_values(const struct kvm_stats_desc *d) { return d->size; }
static inline const char *ckvm_stats_desc_name(const struct kvm_stats_desc *d) { return d->name; }

// Host helpers for the monitor's Linux ABI layer live in their own header.
#include "chost.h"
