import CatalyzerRuntime
import Foundation
import Glibc
import Testing

/// The catalyzerfs daemon behind a restored instance's memory dies while the instance runs: the
/// monitor's next access to a page only the mount could serve fails. That must stop the one
/// invocation with an error, not the process serving it (`serve --restore` runs many).
@Suite("dead mount mid-invocation", .serialized)
struct DeadMountTests {
    @Test("restore per request: catalyzerfs dies while an instance runs; the invocation fails naming the chunk and the dead daemon, the process serves on")
    func restoredInstanceOutlivesItsMount() async throws {
        try await ForkTests.withScene("restore-dead-mount") { scene in
            let service = RestoringFunctionService(store: scene.scene.store, mount: scene.mountpoint)
            let first = try ForkTests.result(try await service.invoke(ForkTests.request(#"{"value": "before"}"#)))
            #expect(first["value"] as? String == "before")
            // Sleeps, then writes 32 MiB: fresh guest pages and page-table pages, which the monitor
            // fills through the mapping of the image's memory, so through the mount. The daemon
            // dies, and the page cache goes, while it sleeps (a killed catalyzerfs takes 1-2 s to go
            // while other tests load the host).
            let started = Date()
            async let late = service.invoke(ForkTests.request(#"{"sleep": 6, "fill": 32}"#))
            try await Task.sleep(for: .milliseconds(400))
            try await scene.killMountDaemon()
            let killed = Date().timeIntervalSince(started)
            try #require(killed < 5, "killing the daemon and dropping the page cache took until \(killed) s, past the instance's sleep")
            do {
                let response = try await late
                Issue.record("an instance answered after its mount died: \(response.outcome)")
            } catch {
                guard case .cannotStart(_, let reason)? = error as? FunctionServiceError else {
                    Issue.record("unexpected refusal: \(error)")
                    return
                }
                #expect(reason.contains("guest memory chunk") && reason.contains("catalyzerfs"), "\(reason)")
            }
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
