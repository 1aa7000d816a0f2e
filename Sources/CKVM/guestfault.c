#define _GNU_SOURCE
#include "guestfault.h"
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum { slot_count = 64, text_size = 512, page_size = 4096 };

/// One guarded range. `claimed` reserves the slot for a registering thread; `active` is set once
/// the slot is filled and cleared on removal, so the handler never reads a half-written slot.
struct guard_slot {
    int claimed;
    volatile int active;
    uintptr_t base;
    uint64_t size;
    uint64_t chunk_size;
    /// Offset of the first access that failed, -1 while none has.
    int64_t failed_offset;
    char prefix[text_size];
    char suffix[text_size];
    char probe_path[text_size];
    char dead_suffix[text_size];
};

static struct guard_slot slots[slot_count];
static volatile int handler_installed;

static void write_all(const char *text, size_t length) {
    while (length > 0) {
        ssize_t written = write(2, text, length);
        if (written <= 0) return;
        text += written;
        length -= (size_t)written;
    }
}

static void on_sigbus(int signal, siginfo_t *info, void *context) {
    (void)context;
    uintptr_t address = (uintptr_t)info->si_addr;
    for (int i = 0; i < slot_count; i++) {
        struct guard_slot *slot = &slots[i];
        if (!slot->active || address < slot->base || address - slot->base >= slot->size) continue;
        // A zero page in place of the failing one: the access completes when the handler returns,
        // and the monitor stops the sandbox before its program runs again.
        void *page = (void *)(address & ~(uintptr_t)(page_size - 1));
        if (mmap(page, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
            int64_t none = -1;
            __atomic_compare_exchange_n(&slot->failed_offset, &none, (int64_t)(address - slot->base), 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE);
            return;
        }
        uint64_t chunk = (address - slot->base) / slot->chunk_size;
        char digits[24];
        int count = 0;
        do { digits[sizeof(digits) - 1 - count++] = (char)('0' + chunk % 10); chunk /= 10; } while (chunk > 0);
        // stat(2) is async-signal-safe; a dead FUSE mount answers it with ENOTCONN at once.
        const char *suffix = slot->suffix;
        struct stat status;
        if (slot->probe_path[0] && stat(slot->probe_path, &status) != 0 && (errno == ENOTCONN || errno == ECONNABORTED))
            suffix = slot->dead_suffix;
        write_all(slot->prefix, strlen(slot->prefix));
        write_all(digits + sizeof(digits) - count, (size_t)count);
        write_all(suffix, strlen(suffix));
        _exit(1);
    }
    // Not guest memory: a real crash. Take the default action when the access repeats.
    struct sigaction fallback;
    memset(&fallback, 0, sizeof(fallback));
    fallback.sa_handler = SIG_DFL;
    sigaction(signal, &fallback, NULL);
}

int chost_guard_guest_memory(const void *base, uint64_t size, uint64_t chunk_size, const char *prefix, const char *suffix,
                             const char *probe_path, const char *dead_suffix) {
    if (!handler_installed) {
        struct sigaction action;
        memset(&action, 0, sizeof(action));
        action.sa_sigaction = on_sigbus;
        action.sa_flags = SA_SIGINFO;
        sigemptyset(&action.sa_mask);
        if (sigaction(SIGBUS, &action, NULL) != 0) return -1;
        handler_installed = 1;
    }
    for (int i = 0; i < slot_count; i++) {
        struct guard_slot *slot = &slots[i];
        int unclaimed = 0;
        if (!__atomic_compare_exchange_n(&slot->claimed, &unclaimed, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
        slot->base = (uintptr_t)base;
        slot->size = size;
        slot->chunk_size = chunk_size ? chunk_size : 1;
        __atomic_store_n(&slot->failed_offset, -1, __ATOMIC_RELEASE);
        strncpy(slot->prefix, prefix, text_size - 1);
        slot->prefix[text_size - 1] = 0;
        strncpy(slot->suffix, suffix, text_size - 1);
        slot->suffix[text_size - 1] = 0;
        strncpy(slot->probe_path, probe_path ? probe_path : "", text_size - 1);
        slot->probe_path[text_size - 1] = 0;
        strncpy(slot->dead_suffix, dead_suffix ? dead_suffix : "", text_size - 1);
        slot->dead_suffix[text_size - 1] = 0;
        __atomic_store_n(&slot->active, 1, __ATOMIC_RELEASE);
        return i;
    }
    return -1;
}

int64_t chost_guest_memory_failure(int slot) {
    if (slot < 0 || slot >= slot_count) return -1;
    return __atomic_load_n(&slots[slot].failed_offset, __ATOMIC_ACQUIRE);
}

void chost_unguard_guest_memory(int slot) {
    if (slot < 0 || slot >= slot_count) return;
    __atomic_store_n(&slots[slot].active, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&slots[slot].claimed, 0, __ATOMIC_RELEASE);
}
