import CatalyzerKernel
import CatalyzerRuntime
import Foundation
import Glibc
import Testing

/// The catalyzerfs daemon behind a restored instance's memory dies while the instance lives: the
/// monitor's next access to a page only the mount could serve fails (SIGBUS). That must stop the
/// one sandbox with an error, not the process serving it (`serve --restore` runs many).
@Suite("dead mount under a restored instance", .serialized)
struct DeadMountTests {
    /// Keeps a restored sandbox across the threads of a test; used by one at a time.
    final class Held: @unchecked Sendable {
        var sandbox: RestoredSandbox?
    }

    @Test("catalyzerfs dies between a restore and its run: the run fails naming the chunk and the dead daemon, and the process serves on")
    func restoredInstanceOutlivesItsMount() async throws {
        try await ForkTests.withScene("restore-dead-mount") { scene in
            let service = RestoringFunctionService(store: scene.scene.store, mount: scene.mountpoint)
            let first = try ForkTests.result(try await service.invoke(ForkTests.request(#"{"value": "before"}"#)))
            #expect(first["value"] as? String == "before")
            // Restored, not yet run: its memory is a mapping of the image's file on the mount.
            let stdin = try RequestPipe.holding(#"{"fill": 32}"#)
            defer { close(stdin) }
            let stdout = try OutputCollector(limit: 1 << 20, keep: .first)
            let stderr = try OutputCollector(limit: 1 << 20, keep: .last)
            var options = RestoreOptions()
            options.standardStreams = [stdin, stdout.writeEnd, stderr.writeEnd]
            let mount = try CatalyzerMount.resolve(mount: scene.mountpoint, store: scene.scene.store)
            let store = scene.scene.store, restoreOptions = options
            let held = Held()
            let restored: String? = await InstanceThread.run {
                do {
                    held.sandbox = try RestoredSandbox(image: "stateful", mount: mount, store: store, options: restoreOptions)
                    return nil
                } catch {
                    return "\(error)"
                }
            }
            try #require(restored == nil, "restore: \(restored ?? "")")
            try scene.killMountDaemon()
            // Writing 32 MiB needs fresh guest pages and page-table pages, which the monitor fills
            // through the mapping of the image's memory: through the dead mount.
            let ran: String = await InstanceThread.run {
                defer { held.sandbox = nil }
                do {
                    return "ran to \(try held.sandbox!.run(timeoutSeconds: 30))"
                } catch {
                    return "\(error)"
                }
            }
            let output = String(decoding: stdout.finish().bytes, as: UTF8.self)
            _ = stderr.finish()
            #expect(ran.contains("guest memory chunk") && ran.contains("catalyzerfs") && ran.contains("has died"), "\(ran)")
            #expect(output.isEmpty, "the instance answered on memory it could not read: \(output)")
            // The process lives on and says why the next restore cannot start.
            do {
                let response = try await service.invoke(ForkTests.request(#"{"value": "after"}"#))
                Issue.record("a restore through a dead mount answered: \(response.outcome)")
            } catch {
                #expect("\(error)".contains("catalyzerfs"), "\(error)")
            }
        }
    }
}
