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
