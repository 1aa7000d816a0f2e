// A SIGBUS guard for guest memory restored from an image file. When catalyzerfs cannot serve a
// page (a corrupt or missing chunk blob, or its daemon died), the kernel raises SIGBUS on the
// monitor's access to the mapping. The guard puts a zero page in place of the one that failed,
// so the access completes, and records where it failed: the monitor checks that before every
// entry into the guest and stops the sandbox, so a program never runs on memory it could not
// read, and a daemon serving many sandboxes loses only the one. Only async-signal-safe calls run
// in the handler.
#pragma once
#include <stdint.h>

/// Guards `[base, base+size)`: a SIGBUS inside it maps a zero page over the failing page and
/// records the offset for `chost_guest_memory_failure`. Should that mapping fail, it writes
/// `prefix`, the chunk number (offset / `chunk_size`) and `suffix` to fd 2 and exits with status 1;
/// if `probe_path` (a file on the mount serving the memory) cannot be stat'ed because the mount
/// has lost its daemon (ENOTCONN, ECONNABORTED), `dead_suffix` is written instead of `suffix`.
/// Returns a slot number for `chost_unguard_guest_memory`, or -1 when every slot is taken.
int chost_guard_guest_memory(const void *base, uint64_t size, uint64_t chunk_size, const char *prefix, const char *suffix,
                             const char *probe_path, const char *dead_suffix);

/// The offset in the range of the first access that failed since it was guarded, or -1.
int64_t chost_guest_memory_failure(int slot);

/// Stops guarding the range registered in `slot`.
void chost_unguard_guest_memory(int slot);
