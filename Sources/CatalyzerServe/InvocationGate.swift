import Synchronization

/// Counts invocations in flight (synchronous and Event ones alike), refuses one past
/// `--max-instances`, and lets shutdown wait until the last one has finished.
public final class InvocationGate: Sendable {
    public let limit: Int?
    private struct State {
        var inFlight = 0
        var draining = false
    }
    private let state = Mutex(State())
    private let onChange: @Sendable (Int) -> Void

    public init(limit: Int?, onChange: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.limit = limit
        self.onChange = onChange
    }

    public enum Refusal: Error, Equatable {
        case full(limit: Int)
        case draining
    }

    /// Takes a slot, or says why not.
    public func enter() throws(Refusal) {
        let result: Result<Int, Refusal> = state.withLock { state in
            if state.draining { return .failure(.draining) }
            if let limit, state.inFlight >= limit { return .failure(.full(limit: limit)) }
            state.inFlight += 1
            return .success(state.inFlight)
        }
        onChange(try result.get())
    }

    public func leave() {
        let count = state.withLock { state in
            state.inFlight -= 1
            return state.inFlight
        }
        onChange(count)
    }

    public var inFlight: Int { state.withLock { $0.inFlight } }

    /// Refuses new invocations from now on.
    public func startDraining() { state.withLock { $0.draining = true } }

    /// Returns once nothing is in flight. Polls: invocations end at most a few thousand times a
    /// second and shutdown happens once, so a 20 ms poll costs nothing and needs no waiter list.
    public func drained() async {
        while inFlight > 0 {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}
