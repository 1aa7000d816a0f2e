import CatalyzerImage
import Foundation
import Glibc

/// A Node.js function's dependencies: the code directory's `node_modules` (vendored, or installed
/// from its lockfile beforehand), checked against `package.json` and `package-lock.json`, or, when
/// there is none, what `npm ci` installs from the lockfile on the host. They become the function's
/// dependencies layer at /var/task/node_modules, shared by digest between functions with the same
/// modules; the code layer holds the rest of the directory.
enum NodeDependencies {
    /// The dependencies as a rootfs tree (`var/task/node_modules/...`), staged once per store and
    /// content: a directory under `work` named by a digest of the modules' files (vendored) or of
    /// package.json and package-lock.json (installed by npm ci), so functions with the same modules
    /// pack the same tree into the same layer whatever their files' times. Nil when the function
    /// has no dependencies. Throws when package.json declares one that is not there, or that is
    /// there in a version other than the lockfile's.
    static func stage(code: String, work: String, codePath: String) throws -> String? {
        let declared = try declaredDependencies(code)
        let locked = try lockedVersions(code)
        let modules = code + "/node_modules"
        var isDirectory: ObjCBool = false
        let vendored = FileManager.default.fileExists(atPath: modules, isDirectory: &isDirectory)
        if vendored {
            guard isDirectory.boolValue else { throw FunctionBuildError.nodeDependencies("\(modules) is not a directory") }
            try check(modules: modules, declared: declared, locked: locked)
        } else {
            guard !declared.isEmpty else { return nil }
            guard access(code + "/package-lock.json", R_OK) == 0 else {
                throw FunctionBuildError.nodeDependencies(
                    "package.json declares \(declared.sorted().joined(separator: ", ")) but the code directory has neither node_modules nor package-lock.json; run `npm ci` (or `npm install`) there first")
            }
        }
        let key = vendored ? try treeDigest(modules) : try lockDigest(code)
        let directory = work + "/node-" + key.prefix(32)
        if FileManager.default.fileExists(atPath: directory + codePath + "/node_modules") { return directory }
        let stage = directory + ".building-\(getpid())"
        try? FileManager.default.removeItem(atPath: stage)
        defer { try? FileManager.default.removeItem(atPath: stage) }
        if vendored {
            try copy(modules, to: stage + codePath)
        } else {
            try install(code: code, into: stage + codePath)
            try check(modules: stage + codePath + "/node_modules", declared: declared, locked: locked)
        }
        guard rename(stage, directory) == 0 else {
            if FileManager.default.fileExists(atPath: directory + codePath + "/node_modules") { return directory }  // another create won
            throw FunctionBuildError.toolFailed(tool: "rename", output: "\(stage) to \(directory): \(String(cString: strerror(errno)))")
        }
        return directory
    }

    /// A digest of a tree's names, types, modes, symlink targets and file contents.
    static func treeDigest(_ root: String) throws -> String {
        guard let enumerator = FileManager.default.enumerator(atPath: root) else {
            throw FunctionBuildError.codeUnreadable(path: root, reason: "it cannot be listed")
        }
        var paths: [String] = []
        while let relative = enumerator.nextObject() as? String { paths.append(relative) }
        var listing = ""
        for relative in paths.sorted() {
            let path = root + "/" + relative
            var info = stat()
            guard lstat(path, &info) == 0 else { throw FunctionBuildError.codeUnreadable(path: path, reason: String(cString: strerror(errno))) }
            listing += "\(relative)\u{0}\(info.st_mode)\u{0}"
            switch info.st_mode & S_IFMT {
            case S_IFREG:
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw FunctionBuildError.codeUnreadable(path: path, reason: "it cannot be read")
                }
                listing += Digest(of: [UInt8](data)).hex
            case S_IFLNK:
                listing += (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? ""
            default:
                break
            }
            listing += "\n"
        }
        return Digest(of: Array(listing.utf8)).hex
    }

    static func lockDigest(_ code: String) throws -> String {
        var bytes = Array("npm ci --omit=dev\n".utf8)
        for file in ["package.json", "package-lock.json"] {
            guard let data = FileManager.default.contents(atPath: code + "/" + file) else {
                throw FunctionBuildError.codeUnreadable(path: code + "/" + file, reason: "it cannot be read")
            }
            bytes += Array(data) + [0]
        }
        return Digest(of: bytes).hex
    }

    /// The names under `dependencies` in package.json (devDependencies are not shipped).
    static func declaredDependencies(_ code: String) throws -> Set<String> {
        guard let object = try jsonObject(code + "/package.json") else { return [] }
        guard let dependencies = object["dependencies"] else { return [] }
        guard let table = dependencies as? [String: Any] else {
            throw FunctionBuildError.nodeDependencies("package.json's \"dependencies\" is not an object of names and versions")
        }
        return Set(table.keys)
    }

    /// Versions from package-lock.json (lockfile version 2 or 3: `packages["node_modules/NAME"]`).
    static func lockedVersions(_ code: String) throws -> [String: String] {
        guard let object = try jsonObject(code + "/package-lock.json") else { return [:] }
        guard let packages = object["packages"] as? [String: Any] else {
            throw FunctionBuildError.nodeDependencies("package-lock.json has no \"packages\" table (lockfile version 1 is npm 6's; regenerate it with npm 7 or later)")
        }
        var versions: [String: String] = [:]
        for (key, value) in packages where key.hasPrefix("node_modules/") {
            let name = String(key.dropFirst("node_modules/".count))
            guard !name.contains("/node_modules/"), let entry = value as? [String: Any], let version = entry["version"] as? String else { continue }
            versions[name] = version
        }
        return versions
    }

    static func check(modules: String, declared: Set<String>, locked: [String: String]) throws {
        for name in declared.sorted() {
            guard let manifest = try jsonObject(modules + "/" + name + "/package.json") else {
                throw FunctionBuildError.nodeDependencies("package.json declares \(name), which node_modules does not have; run `npm ci` in the code directory")
            }
            if let expected = locked[name], let present = manifest["version"] as? String, present != expected {
                throw FunctionBuildError.nodeDependencies("node_modules has \(name) \(present) but package-lock.json locks \(expected); run `npm ci` in the code directory")
            }
        }
    }

    /// `npm ci` from the lockfile, production dependencies only and no install scripts (they
    /// would run on the host, and could build for it rather than for the guest).
    static func install(code: String, into directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for file in ["package.json", "package-lock.json"] {
            try FileManager.default.copyItem(atPath: code + "/" + file, toPath: directory + "/" + file)
        }
        let npm = ["/usr/bin/npm", "/usr/local/bin/npm"].first { (path: String) in access(path, X_OK) == 0 }
        guard let npm else {
            throw FunctionBuildError.nodeDependencies("the code directory has package-lock.json but no node_modules, and this host has no npm to install them (apt-get install npm, or vendor node_modules)")
        }
        let result = try FunctionBuilder.run(npm, ["ci", "--prefix", directory, "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"])
        for file in ["package.json", "package-lock.json"] { try? FileManager.default.removeItem(atPath: directory + "/" + file) }
        guard result.status == 0 else { throw FunctionBuildError.npmFailed(lockfile: code + "/package-lock.json", output: result.output) }
    }

    static func copy(_ modules: String, to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        let copied = try FunctionBuilder.run("/bin/cp", ["-a", "--no-preserve=ownership", modules, directory + "/"])
        guard copied.status == 0 else { throw FunctionBuildError.toolFailed(tool: "cp", output: copied.output) }
    }

    /// A JSON object from a file; nil when the file does not exist.
    static func jsonObject(_ path: String) throws -> [String: Any]? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FunctionBuildError.codeUnreadable(path: path, reason: "it cannot be read")
        }
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw FunctionBuildError.nodeDependencies("\(path) is not a JSON object")
        }
        return object
    }
}
