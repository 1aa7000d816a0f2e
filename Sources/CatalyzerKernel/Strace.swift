import Glibc

/// `--strace`: one line per syscall on the sandbox's stderr, `name(args) = result`, in strace's style.
enum Strace {
    /// The call part, formatted before the handler runs (input strings are read now).
    static func callText(_ arguments: SyscallArguments, definition: SyscallDefinition?, task: Task) -> String {
        guard let definition else {
            return "syscall_\(arguments.number)(" + arguments.values.map { "0x" + hex($0) }.joined(separator: ", ")
        }
        var parts: [String] = []
        for (index, kind) in definition.arguments.enumerated() {
            let value = arguments[index]
            switch kind {
            case .int: parts.append(String(arguments.signed(index)))
            case .hex: parts.append(value == 0 ? "NULL" : "0x" + hex(value))
            case .flags: parts.append(value == 0 ? "0" : "0x" + hex(value))
            case .octal: parts.append("0" + String(value, radix: 8))
            case .fd: parts.append(arguments.int32(index) == AT_FDCWD ? "AT_FDCWD" : String(arguments.int32(index)))
            case .path:
                parts.append((try? task.space.readCString(value)).map(quote) ?? "0x" + hex(value))
            case .inBuffer(let lengthArgument):
                let length = min(Int(clamping: arguments[lengthArgument]), 32)
                parts.append((try? task.space.read(value, count: length)).map { quote(bytes: $0, truncated: Int(clamping: arguments[lengthArgument]) > 32) }
                             ?? "0x" + hex(value))
            case .outBuffer: parts.append("\u{0}")  // filled in after the call
            }
        }
        return definition.name + "(" + parts.joined(separator: ", ")
    }

    static func emit(_ call: String, result: Int64, arguments: SyscallArguments, definition: SyscallDefinition?,
                     task: Task) {
        var text = call
        if let definition, let index = definition.arguments.firstIndex(where: { if case .outBuffer = $0 { true } else { false } }) {
            let shown = result > 0 ? (try? task.space.read(arguments[index], count: Int(min(result, 32))))
                .map { quote(bytes: $0, truncated: result > 32) } : nil
            text = text.split(separator: "\u{0}", omittingEmptySubsequences: false)
                .joined(separator: shown ?? "0x" + hex(arguments[index]))
        }
        text += ") = "
        if result < 0 && result >= -4095 {
            text += "-1 \(Errno(Int32(-result)))"
        } else if let name = definition?.name, ["mmap", "brk", "mremap"].contains(name) {
            text += "0x" + hex(UInt64(bitPattern: result))
        } else {
            text += String(result)
        }
        text += "\n"
        // Like strace -f: lines of forked processes name their pid.
        if task.tid != 1 { text = "[pid \(task.tid)] " + text }
        writeAll(task.sandbox.traceFD, text)
    }

    private static func quote(_ string: String) -> String { quote(bytes: Array(string.utf8), truncated: false) }

    private static func quote(bytes: [UInt8], truncated: Bool) -> String {
        var text = "\""
        for byte in bytes {
            switch byte {
            case 0x0A: text += "\\n"
            case 0x09: text += "\\t"
            case 0x22: text += "\\\""
            case 0x5C: text += "\\\\"
            case 0x20..<0x7F: text += String(UnicodeScalar(byte))
            default: text += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
            }
        }
        return text + "\"" + (truncated ? "..." : "")
    }
}

/// Writes all of `text` to a host fd (the monitor's own diagnostics).
func writeAll(_ fd: Int32, _ text: String) {
    var bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        offset += written
    }
}
