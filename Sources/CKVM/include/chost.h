// Host system calls the monitor needs that glibc's Swift overlay does not expose (no variadic
// `syscall` in Swift). Thin wrappers only; they return -1 with errno set on failure.
#pragma once
#include <stdint.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/openat2.h>

/// openat2(2) with `resolve` flags, e.g. RESOLVE_IN_ROOT to confine lookups to `dirfd`.
static inline int chost_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve) {
    struct open_how how = { .flags = flags, .mode = mode, .resolve = resolve };
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
}

static inline long chost_getdents64(int fd, void *buffer, size_t length) {
    return syscall(SYS_getdents64, fd, buffer, length);
}

static inline long chost_getrandom(void *buffer, size_t length, unsigned int flags) {
    return syscall(SYS_getrandom, buffer, length, flags);
}

/// Executes CPUID with leaf `*eax` (subleaf `*ecx`) on the host.
static inline void chost_cpuid(uint32_t *eax, uint32_t *ebx, uint32_t *ecx, uint32_t *edx) {
    __asm__ volatile("cpuid" : "+a"(*eax), "=b"(*ebx), "+c"(*ecx), "=d"(*edx));
}

static inline long chost_copy_file_range(int in, int64_t *in_offset, int out, int64_t *out_offset, size_t length) {
    return syscall(SYS_copy_file_range, in, in_offset, out, out_offset, length, 0);
}

/// fstatfs(2) into a `struct statfs` (120 bytes on x86-64) the caller provides.
static inline int chost_fstatfs(int fd, void *buffer) {
    return (int)syscall(SYS_fstatfs, fd, buffer);
}

/// The host's time-stamp counter.
static inline uint64_t chost_rdtsc(void) {
    uint32_t low, high;
    __asm__ volatile("rdtsc" : "=a"(low), "=d"(high));
    return (uint64_t)high << 32 | low;
}
