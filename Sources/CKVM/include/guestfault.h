// A SIGBUS guard for guest memory restored from an image file. When catalyzerfs cannot serve a
// page (a corrupt or missing chunk blob), the kernel raises SIGBUS on the monitor's access to the
// mapping. The guard turns that into a one-line error naming the chunk and exits with status 1,
// so a sandbox never runs on memory it could not read. Only async-signal-safe calls run in it.
#pragma once
#include <stdint.h>

/// Guards `[base, base+size)`: a SIGBUS inside it writes `prefix`, the chunk number
/// (offset / `chunk_size`) and `suffix` to fd 2 and exits with status 1. If `probe_path` (a file
/// on the mount serving the memory) cannot be stat'ed because the mount has lost its daemon
/// (ENOTCONN, ECONNABORTED), `dead_suffix` is written instead of `suffix`: the chunk is not
/// damaged, the filesystem is gone. Returns a slot number for `chost_unguard_guest_memory`, or
/// -1 when every slot is taken.
int chost_guard_guest_memory(const void *base, uint64_t size, uint64_t chunk_size, const char *prefix, const char *suffix,
                             const char *probe_path, const char *dead_suffix);

/// Stops guarding the range registered in `slot`.
void chost_unguard_guest_memory(int slot);
