import Dispatch
import Synchronization

/// Runs `body` as a task and waits for it on this thread. For synchronous entry points (argument-parser commands,
/// the daemon's set-up on the main thread) that must finish async work before going on; never call it on a thread
/// an async task may need (an event loop, the cooperative pool).
public func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let result = Mutex<Result<T, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        do {
            let value = try await body()
            result.withLock { $0 = .success(value) }
        } catch {
            result.withLock { $0 = .failure(error) }
        }
        done.signal()
    }
    done.wait()
    return try result.withLock { $0! }.get()
}
