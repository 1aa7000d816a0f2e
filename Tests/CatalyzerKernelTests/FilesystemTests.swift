import CatalyzerKernel
import Glibc
import Testing

/// Filesystem ABI gaps found by running CPython's test suite and real functions: large file
/// mappings, links, locks, syncs, metadata, shared mappings and the copying calls. The fixture
/// `Tests/fixtures/kernel/fsprobe.c` prints one line per check; the expected lines are what the
/// same program printed on Linux 6.x run in a chroot of the test rootfs with the rootfs bind-mounted
/// read-only and tmpfs on /tmp and /dev/shm, except where a comment says the sandbox differs.
@Suite("filesystem ABI")
struct FilesystemTests {
    private func lines(_ result: RunResult) -> [String] {
        result.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).filter { !$0.isEmpty }
    }

    @Test("a 20 MiB private file mapping after scattered frees holds all the file's bytes (ld.so mapping OpenBLAS)")
    func largeFileMapping() throws {
        let result = try runSandbox(["/bin/fsprobe", "bigmap", "/big/large.bin"])
        #expect(result.exit == .exited(status: 0), "\(result.stderr)")
        #expect(result.stdout == "mmap of 20971520 bytes: matches read, tail present\n")
    }

    @Test("hard links and symlinks in /tmp, into the rootfs, and never out of it")
    func links() throws {
        let rootfs = try requireRootfs()
        let result = try runSandbox(["/bin/fsprobe", "links", rootfs.secretPath])
        #expect(result.exit == .exited(status: 0), "\(result.stderr)")
        #expect(!result.stdout.contains(TestRootfs.secret))
        #expect(lines(result) == [
            "link: ok", "nlink after link: 2", "read via hard link: alpha", "unlink first name: ok",
            "nlink after unlink: 1", "link onto existing: EEXIST", "link a directory: EPERM",
            "link rootfs to tmp: EXDEV", "link in rootfs: EROFS", "symlink relative: ok", "symlink to rootfs file: ok",
            "symlink to rootfs dir: ok", "symlink in rootfs: EROFS", "symlink existing name: EEXIST", "readlink: b",
            "readlink of a file: EINVAL", "lstat: symlink size 1", "stat: regular file", "read via relative symlink: alpha",
            "read via symlink to rootfs: banana", "read via symlinked rootfs dir: the quick brown fox",
            "create through symlinked rootfs dir: EROFS", "chdir via symlink: ok", "getcwd: /data/sub",
            "escape relative: ENOENT", "escape absolute: ENOENT", "open symlink loop: ELOOP",
            "open symlink with O_NOFOLLOW: ELOOP", "create through dangling symlink: ok", "stat created target: ok",
            "unlink symlink: ok", "target survives: ok", "d_type of symlink: DT_LNK",
        ])
    }

    @Test("fsync and record locks as SQLite uses them; a lock held by another process is reported and refused")
    func syncAndLocks() throws {
        let result = try runSandbox(["/bin/fsprobe", "locks"])
        #expect(result.exit == .exited(status: 0), "\(result.stderr)")
        #expect(lines(result) == [
            "fsync: ok", "fdatasync: ok", "syncfs: ok", "getlk alone: unlocked", "setlk write: ok", "setlk read: ok",
            "ofd setlk: ok", "child getlk: write lock 0+10 by parent", "child getlk read: write lock 0+10 by parent",
            "child setlk read over read: ok", "child setlk write: EAGAIN",
            // Linux blocks here until the parent unlocks; the parent cannot run while its child does.
            "child setlkw write: EDEADLK",
            "child ofd setlk write: EAGAIN", "child flock: ok", "flock held by child's closed description: ok",
            "unlock: ok", "child setlk after unlock: ok", "parent getlk after child exit: unlocked",
        ])
    }

    @Test("O_CREAT with a trailing slash, atime and ctime, chown, statfs, xattrs, FIONBIO/FIOCLEX, setsid, /dev/shm")
    func metadata() throws {
        let result = try runSandbox(["/bin/fsprobe", "metadata"])
        #expect(result.exit == .exited(status: 0), "\(result.stderr)")
        #expect(lines(result) == [
            "open dir/ O_CREAT: EISDIR", "dir/ created: no", "open file/ : ENOENT", "open existing file/: ENOTDIR",
            "utimensat: ok", "atime 1000000000.5 mtime 1500000000.7 ctime recent yes",
            "read moved atime (relatime): yes, mtime kept: yes", "UTIME_OMIT keeps atime: yes, mtime 1234",
            "chown: ok", "owner 123 group 456", "chown -1 group: ok", "owner 77 group 456", "chown rootfs: EROFS",
            "statfs /tmp: 0x1021994 rw", "statfs /dev/shm: 0x1021994", "statfs /data: ro", "fstatfs /tmp file: 0x1021994",
            // Linux 6.6+ tmpfs stores user.* attributes; the sandbox's has none (as older tmpfs).
            "getxattr tmp: EOPNOTSUPP", "setxattr tmp: EOPNOTSUPP", "fgetxattr tmp: EOPNOTSUPP", "listxattr tmp: 0",
            "setxattr rootfs: EROFS", "getxattr missing: ENOENT",
            "FIONBIO: ok", "O_NONBLOCK: set", "FIOCLEX: ok", "FD_CLOEXEC: set", "FIONCLEX: ok", "FD_CLOEXEC: clear",
            "setsid: pid", "/dev/shm file: in shm",
        ])
        let added: Set<Int> = [26, 73, 74, 75, 86, 88, 93, 112, 137, 138, 162, 260, 265, 266, 275, 277, 306, 319, 326]
        #expect(Set(result.unimplemented.keys).isDisjoint(with: added.union(188...199)), "\(result.unimplemented)")
    }

    @Test("MAP_SHARED writable mappings of /tmp files and memfds share pages with read/write and a forked child")
    func sharedMappings() throws {
        let result = try runSandbox(["/bin/fsprobe", "shared"])
        #expect(result.exit == .exited(status: 0), "\(result.stderr)")
        #expect(lines(result) == [
            "read sees: through the mapping", "mapping sees: written", "child sees: through the mapping",
            "parent sees: from the child", "msync: ok", "second mapping sees: written", "second mapping sees: changed",
            "after munmap and close: through the mapping", "MAP_SHARED PROT_WRITE of read-only fd: EACCES",
            "MAP_SHARED PROT_WRITE of rootfs file: EACCES", "memfd_create: ok", "ftruncate memfd: ok",
            "memfd mapping: memfd bytes", "memfd read: MEMFD bytes", "memfd size 4096",
        ])
    }

    @Test("splice between pipes and files, copy_file_range within /tmp")
    func copying() throws {
        let result = try runSandbox(["/bin/fsprobe", "copying"])
        #expect(result.exit == .exited(status: 0), "\(result.stderr)")
        #expect(lines(result) == [
            "splice pipe to file: 8", "file: spliced", "splice file to pipe: 5, offset 12", "pipe holds: apple",
            "splice file to file: EINVAL", "copy_file_range rootfs to tmp: EXDEV", "copy_file_range: 7, offset 8",
            "copy: pliced",
        ])
    }

    @Test("a /tmp file's bytes count against the capacity until it is unlinked and closed")
    func capacityUntilLastClose() throws {
        let result = try runSandbox(["/bin/busybox", "sh", "-c", """
            dd if=/dev/zero of=/tmp/a bs=1M count=20 2>/dev/null && rm /tmp/a
            dd if=/dev/zero of=/tmp/b bs=1M count=20 2>/dev/null && echo freed at unlink; rm /tmp/b
            exec 3>/tmp/c; dd if=/dev/zero of=/tmp/c bs=1M count=20 2>/dev/null; rm /tmp/c
            dd if=/dev/zero of=/tmp/d bs=1M count=20 2>/dev/null || echo counted while open; rm -f /tmp/d
            exec 3>&-; dd if=/dev/zero of=/tmp/e bs=1M count=20 2>/dev/null && echo freed at close
            """], memory: 32 << 20)
        #expect(result.stdout == "freed at unlink\ncounted while open\nfreed at close\n", "\(result.stderr)")
    }

    @Test("programs written to /tmp run when executable (static, dynamic, via a symlink), and are EACCES when not")
    func executeFromTmp() throws {
        let result = try runSandbox(["/bin/busybox", "sh", "-c", """
            cp /bin/probe /tmp/p && chmod 755 /tmp/p && /tmp/p statx
            cp /bin/probe-dynamic /tmp/pd && /tmp/pd statx
            ln -s /tmp/p /tmp/p-link && /tmp/p-link statx
            cat /bin/probe > /tmp/q; /tmp/q statx; echo "status $?"
            """])
        #expect(result.stdout == "statx agrees size 26\nstatx agrees size 26\nstatx agrees size 26\nstatus 126\n",
                "\(result.stderr)")
        #expect(result.stderr.contains("Permission denied"), "\(result.stderr)")
    }
}
