// CLinux: Linux calls that Swift's Glibc module does not import (they need _GNU_SOURCE).
#pragma once
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <unistd.h>

/// syncfs(2): flush every dirty page of the filesystem holding `fd`.
static inline int clinux_syncfs(int fd) { return syncfs(fd); }
