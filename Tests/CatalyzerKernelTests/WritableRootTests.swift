import CatalyzerTestSupport
import Foundation
import Glibc
import Testing

/// `catalyzer run --writable-root` (what an OCI bundle with `root.readonly: false` gets): `/`
/// writable through the monitor's in-memory layer over the read-only rootfs. Linux's own
/// overlayfs, with a tmpfs upper over the same rootfs, is the reference.
@Suite("a writable root: an in-memory layer over the rootfs", .serialized)
struct WritableRootTests {
    /// Copy-up, whiteouts, opaque directories, merged listings, renames, links, attributes, a
    /// lower symlink followed to a copied-up executable that still runs.
    static let probe = #"""
        import os, stat, subprocess
        out = []
        def say(*a): out.append(" ".join(str(x) for x in a))
        def attempt(label, f):
            try: say(label, f())
            except OSError as e: say(label, "error", e.errno)
        lib = "/usr/lib/python3.11"
        # a new file in a lower directory; an append to a lower file
        open("/etc/catalyzer-new", "w").write("new\n")
        with open("/etc/group", "a") as f: f.write("appended\n")
        say("group-tail", open("/etc/group").read().splitlines()[-1])
        say("etc", sorted(os.listdir("/etc")))
        # a removed lower file is gone from stat and listings, and can be made again
        os.unlink(lib + "/this.py")
        attempt("this-stat", lambda: os.stat(lib + "/this.py").st_size)
        say("this-listed", "this.py" in os.listdir(lib))
        open(lib + "/this.py", "w").write("again\n")
        say("this-again", open(lib + "/this.py").read().strip(), "this.py" in os.listdir(lib))
        # directories: new trees; a non-empty lower one cannot go; an emptied one can, and one made
        # in its place is empty (nothing of the old one shows through)
        os.makedirs("/opt/newdir/a/b")
        open("/opt/newdir/a/b/f", "w").write("x")
        say("walk", sorted((d, sorted(fs)) for d, _, fs in os.walk("/opt/newdir")))
        attempt("rmdir-nonempty", lambda: os.rmdir(lib + "/email"))
        mime = lib + "/email/mime"
        for name in os.listdir(mime):
            p = os.path.join(mime, name)
            if os.path.isdir(p):
                for sub in os.listdir(p): os.unlink(os.path.join(p, sub))
                os.rmdir(p)
            else:
                os.unlink(p)
        say("mime-emptied", os.listdir(mime))
        os.rmdir(mime)
        attempt("mime-stat", lambda: os.stat(mime).st_mode)
        os.mkdir(mime)
        say("mime-made-again", os.listdir(mime))
        attempt("mime-subdir", lambda: os.stat(mime + "/__pycache__").st_mode)
        # renames: a lower file, a new file over a lower one, a lower directory (EXDEV, as overlayfs)
        os.rename(lib + "/antigravity.py", "/opt/antigravity.py")
        say("renamed", os.path.exists(lib + "/antigravity.py"), "webbrowser" in open("/opt/antigravity.py").read())
        os.rename("/etc/catalyzer-new", "/etc/passwd")
        say("over-lower", open("/etc/passwd").read().strip(), sorted(os.listdir("/etc")))
        attempt("rename-lower-dir", lambda: os.rename(lib + "/json", lib + "/json2"))
        # attributes, links, truncation
        os.chmod(lib + "/keyword.py", 0o600)
        say("chmod", oct(stat.S_IMODE(os.stat(lib + "/keyword.py").st_mode)))
        os.symlink(lib + "/email", "/opt/email-link")
        open("/opt/email-link/through-link.txt", "w").write("t")
        say("through-link", os.path.exists(lib + "/email/through-link.txt"), os.readlink("/opt/email-link"))
        os.link(lib + "/keyword.py", "/opt/keyword-hard")
        os.truncate(lib + "/keyword.py", 3)
        say("hardlink", os.stat("/opt/keyword-hard").st_nlink, os.stat("/opt/keyword-hard").st_size)
        # a lower symlink followed: the copied-up executable (6.8 MB) keeps working
        os.chmod("/usr/bin/python3", 0o700)
        say("python-mode", oct(stat.S_IMODE(os.stat(lib.replace("lib/python3.11", "bin/python3.11")).st_mode)), os.path.islink("/usr/bin/python3"))
        say("child", subprocess.run(["/usr/bin/python3", "-c", "open('/child-file', 'w').write('c'); print('child ran')"],
                                    capture_output=True, text=True).stdout.strip(), open("/child-file").read())
        say("access", os.access("/etc/passwd", os.W_OK), os.access("/", os.W_OK))
        say("root", sorted(os.listdir("/")))
        print("\n".join(out))
        """#

    /// The probe under chroot on a host overlayfs: lower the rootfs, upper and work on a tmpfs,
    /// all in a mount namespace of the run's own, so nothing is left mounted or written.
    static func hostOverlay(_ arguments: [String]) throws -> CommandResult {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (for mount and chroot)")))
        let root = try PythonRootfs.path()
        let layers = try TemporaryDirectory("overlay-layers")
        defer { layers.remove() }
        let script = """
            set -e
            mount -t tmpfs tmpfs "$1"
            mkdir "$1/upper" "$1/work" "$1/merged"
            mount -t overlay overlay -o "lowerdir=$0,upperdir=$1/upper,workdir=$1/work" "$1/merged"
            mount -t tmpfs tmpfs "$1/merged/tmp"
            root="$1/merged"; shift
            exec /usr/bin/env -i \(PythonTests.environment[0]) /usr/sbin/chroot "$root" "$@"
            """
        return try Command.run(HostNamespace.unshare, HostNamespace.arguments(["--mount"], script: script, [root, layers.path] + arguments))
    }

    /// What the probe changes, read from the rootfs directory itself.
    static func rootfsFacts(_ root: String) -> [String] {
        let lib = root + "/usr/lib/python3.11"
        var info = stat()
        let pythonMode = stat(root + "/usr/bin/python3.11", &info) == 0 ? String(info.st_mode & 0o7777, radix: 8) : "missing"
        let files = ["/etc/group", "/etc/passwd", "/usr/lib/python3.11/this.py", "/usr/lib/python3.11/keyword.py"]
        return files.map { "\($0): \((try? Data(contentsOf: URL(fileURLWithPath: root + $0)))?.count ?? -1)" }
            + ["python3.11 mode \(pythonMode)",
               "mime \((try? FileManager.default.contentsOfDirectory(atPath: lib + "/email/mime"))?.count ?? -1)",
               "antigravity \(FileManager.default.fileExists(atPath: lib + "/antigravity.py"))",
               "root \(((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).sorted())"]
    }

    @Test("every change the probe makes reads back as on Linux's overlayfs with a tmpfs upper, and the rootfs is untouched")
    func matchesOverlayfs() throws {
        let root = try PythonRootfs.path()
        let before = Self.rootfsFacts(root)
        let ours = try PythonTests.sandbox(["/usr/bin/python3", "-c", Self.probe], options: ["--writable-root"])
        let host = try Self.hostOverlay(["/usr/bin/python3", "-c", Self.probe])
        try #require(host.status == 0, "the host overlayfs run failed: \(host)")
        #expect(ours.status == 0 && ours.stdout == host.stdout, "sandbox \(ours)\nhost overlayfs \(host)")
        #expect(ours.stdout.contains("child child ran c"), "\(ours)")
        #expect(Self.rootfsFacts(root) == before)
    }

    @Test("without --writable-root the root stays read-only: open for writing, unlink and mkdir are EROFS")
    func readOnlyByDefault() throws {
        let result = try PythonTests.sandbox(["/usr/bin/python3", "-c", """
            import os
            for action in (lambda: open('/etc/x', 'w'), lambda: os.unlink('/etc/group'), lambda: os.mkdir('/opt/d')):
                try: action(); print('allowed')
                except OSError as e: print(e.errno)
            """])
        #expect(result.status == 0 && result.stdout == "30\n30\n30\n", "\(result)")
    }

    @Test("what the root holds counts against --memory: a file written past it ends in ENOSPC, and another sandbox sees none of what one wrote")
    func boundedAndPrivate() throws {
        let result = try PythonTests.sandbox(["/usr/bin/python3", "-c", """
            import os
            piece, written = b"x" * (1 << 20), 0
            try:
                with open('/big', 'wb') as f:
                    while written < (512 << 20):
                        f.write(piece); f.flush(); written += len(piece)
            except OSError as e:
                print('stopped', e.errno, written < (96 << 20))
            os.unlink('/big')
            open('/etc/marker', 'w').write('one sandbox')
            print(open('/etc/marker').read())
            """], options: ["--writable-root", "--memory", "96M"])
        #expect(result.status == 0 && result.stdout == "stopped 28 True\none sandbox\n", "\(result)")
        let other = try PythonTests.sandbox(["/usr/bin/python3", "-c", "import os; print(os.path.exists('/etc/marker'))"],
                                            options: ["--writable-root"])
        #expect(other.status == 0 && other.stdout == "False\n", "\(other)")
    }
}
