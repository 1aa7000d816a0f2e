// CFuse3: libfuse3's low-level API, plus static inline helpers for what Swift cannot express
// (macros, struct initializers with flexible arrays, variadic functions).
#pragma once
#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>
#include <stddef.h>
#include <syslog.h>
#include <sys/syscall.h>
#include <unistd.h>

/// Runs the multi-threaded session loop; `max_idle_threads` workers are kept waiting.
/// (fuse_session_loop_mt is a version-selecting macro, which Swift cannot call.)
static inline int catalyzerfs_session_loop_mt(struct fuse_session *se, unsigned max_idle_threads) {
    struct fuse_loop_config config = { .clone_fd = 0, .max_idle_threads = max_idle_threads };
    return fuse_session_loop_mt(se, &config);
}

/// Pushes `size` bytes at `data` into the kernel's page cache of inode `ino` at `offset`.
/// Returns 0, or a negative errno (-ENOENT when the kernel no longer knows the inode).
static inline int catalyzerfs_notify_store(struct fuse_session *se, fuse_ino_t ino, off_t offset,
                                           const void *data, size_t size) {
    struct fuse_bufvec buffer = FUSE_BUFVEC_INIT(size);
    buffer.buf[0].mem = (void *)data;
    return fuse_lowlevel_notify_store(se, ino, offset, &buffer, (enum fuse_buf_copy_flags)0);
}

/// Sets the open flags that are bitfields of fuse_file_info.
static inline void catalyzerfs_set_open_flags(struct fuse_file_info *fi, int keep_cache, int direct_io) {
    fi->keep_cache = keep_cache ? 1 : 0;
    fi->direct_io = direct_io ? 1 : 0;
}

/// syslog(3) of one preformatted line (syslog itself is variadic).
static inline void catalyzerfs_syslog(int priority, const char *line) {
    syslog(priority, "%s", line);
}

/// Closes every descriptor from 3 up: a detaching daemon must not keep its starter's pipes and
/// sockets open, or whoever waits for them to close (a shell, mount(8), a test) waits forever.
static inline void catalyzerfs_close_inherited_descriptors(void) {
    syscall(SYS_close_range, 3U, ~0U, 0U);
}
