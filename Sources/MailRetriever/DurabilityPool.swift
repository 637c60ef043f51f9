import Dispatch
import NIOPosix
import Synchronization
import SystemIO

/// Runs the fsyncs of committed messages (and what must follow each: naming the file in `new/`) on a few threads,
/// so that several are in flight at once.
///
/// On ext4, xfs or btrfs the fsync of a new file waits for a journal commit; fsyncs in flight together share one
/// commit. One at a time, a download of many small messages spends much of its wall time waiting on the disk; with
/// up to `window` in flight, that wait overlaps the download of the next messages and the commits are shared.
/// Nothing is journaled earlier than before: `drain()` waits for every submitted job and throws the first failure,
/// and keeps throwing it, so a destination whose fsync failed once stays failed for the rest of the run (the
/// caller never journals a message whose fsync did not succeed).
final class DurabilityPool: Sendable {
    /// Threads shared by every destination of the process (`pop3 fetch --daemon` runs several accounts at once).
    static let threadCount = 8
    private static let threads: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: threadCount)
        pool.start()
        return pool
    }()

    /// Jobs of this pool in flight at most; `submit` waits for a free slot beyond that (it bounds open descriptors).
    let window: Int
    private let slots: DispatchSemaphore
    private let inFlight = DispatchGroup()
    private let failure = Mutex<FileSystemError?>(nil)

    init(window: Int = 16) {
        precondition(window > 0)
        self.window = window
        self.slots = DispatchSemaphore(value: window)
    }

    /// Starts `job` on a pool thread, after waiting for a free slot.
    func submit(_ job: @escaping @Sendable () throws(FileSystemError) -> Void) {
        slots.wait()
        inFlight.enter()
        Self.threads.submit { state in
            // The job captures this pool strongly, so the semaphore outlives every wait on it.
            defer {
                self.slots.signal()
                self.inFlight.leave()
            }
            do throws(FileSystemError) {
                guard state == .active else {
                    throw FileSystemError("fsync", path: "(thread pool stopped)", errno: ECANCELED)
                }
                try job()
            } catch {
                self.failure.withLock { if $0 == nil { $0 = error } }
            }
        }
    }

    /// Waits until every submitted job ended; throws the first failure of this pool's life.
    func drain() throws(FileSystemError) {
        inFlight.wait()
        if let error = failure.withLock({ $0 }) { throw error }
    }
}
