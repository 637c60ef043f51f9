import NIOConcurrencyHelpers
import NIOCore

/// An async semaphore: at most `limit` bodies run at once; the others wait in FIFO order without holding a thread.
/// A waiter whose task is cancelled leaves the queue and throws `CancellationError`.
///
/// Used to bound concurrent password hashing, so a login flood queues here instead of occupying every thread of a
/// shared `NIOThreadPool`.
package final class ConcurrencyLimiter: Sendable {
    private struct Waiter {
        var id: UInt64
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var available: Int
        var nextID: UInt64 = 0
        var waiters = CircularBuffer<Waiter>()
    }

    let limit: Int
    /// A pthread mutex (NIOLock), not `Synchronization.Mutex`: this lock is contended under login floods, and the
    /// stdlib Mutex's contended path on Linux (a PI futex the kernel acquires) is invisible to ThreadSanitizer, which
    /// then reports the state it guards as raced (seen in one of two `scripts/sanitize thread` runs).
    private let state: NIOLockedValueBox<State>

    package init(limit: Int) {
        precondition(limit > 0, "the concurrency limit must be positive")
        self.limit = limit
        self.state = NIOLockedValueBox(State(available: limit))
    }

    package func withPermit<Result: Sendable>(_ body: () async throws -> Result) async throws -> Result {
        try await self.acquire()
        defer { self.release() }
        return try await body()
    }

    private func acquire() async throws {
        let id = self.state.withLockedValue { state in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                enum Action { case resume, cancel, wait }
                let action = self.state.withLockedValue { state -> Action in
                    if Task.isCancelled { return .cancel }
                    if state.available > 0 {
                        state.available -= 1
                        return .resume
                    }
                    state.waiters.append(Waiter(id: id, continuation: continuation))
                    return .wait
                }
                switch action {
                case .resume: continuation.resume()
                case .cancel: continuation.resume(throwing: CancellationError())
                case .wait: break
                }
            }
        } onCancel: {
            let waiter = self.state.withLockedValue { state -> Waiter? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    private func release() {
        let next = self.state.withLockedValue { state -> Waiter? in
            if state.waiters.isEmpty {
                state.available += 1
                return nil
            }
            return state.waiters.removeFirst()  // the permit passes straight to the next waiter
        }
        next?.continuation.resume()
    }
}
