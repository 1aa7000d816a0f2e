// CLinux: Linux calls that Swift's Glibc module does not import (they need _GNU_SOURCE).
#pragma once
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <unistd.h>

/// syncfs(2): flush every dirty page of the filesystem holding `fd`.
static inline int clinux_syncfs(int fd) { return syncfs(fd); }

/// posix_spawn_file_actions_addclosefrom_np: the child closes every fd from `from` up.
/// `actions` is a `posix_spawn_file_actions_t *`, passed untyped: including <spawn.h> here under
/// _GNU_SOURCE would give fd_set a second definition beside the Glibc module's.
int clinux_spawn_close_from(void *actions, int from);

/// sendmsg(2) of `length` bytes with `count` fds attached (SCM_RIGHTS). Returns the bytes sent
/// or -1 with errno.
long clinux_send_with_fds(int socket, const void *bytes, unsigned long length, const int *fds, int count);

/// recvmsg(2) of up to `length` bytes and up to `capacity` fds (SCM_RIGHTS, received
/// close-on-exec). Returns the bytes read (0 at end of stream) or -1 with errno; `*count` is
/// the number of fds stored in `fds`. Fds beyond `capacity` (a truncated control message) are
/// closed and the call fails with EMSGSIZE.
long clinux_receive_with_fds(int socket, void *bytes, unsigned long length, int *fds, int capacity, int *count);

/// A new pseudo-terminal: `*primary` (the side an engine reads and writes) and `*secondary`
/// (the program's stdio), both close-on-exec. Returns 0, or -1 with errno.
int clinux_open_pty(int *primary, int *secondary);

/// getrandom(2) with no flags: fills `length` bytes from the kernel's pool. Returns the bytes
/// filled or -1 with errno.
long clinux_getrandom(void *bytes, unsigned long length);

/// epoll(7) without its packed `struct epoll_event` at the boundary: `fd` is watched for input
/// (level-triggered) with `fd` itself as the event's data. Returns 0, or -1 with errno.
int clinux_epoll_watch_input(int epoll, int fd);

/// Stops watching `fd`. Returns 0, or -1 with errno.
int clinux_epoll_unwatch(int epoll, int fd);

/// epoll_wait(2): stores the fds of up to `capacity` ready events in `fds`. Returns how many,
/// or -1 with errno.
int clinux_epoll_wait_fds(int epoll, int *fds, int capacity, int timeout_milliseconds);

/// epoll_create1(EPOLL_CLOEXEC). Returns the epoll fd, or -1 with errno.
int clinux_epoll_create(void);
