import NIOCore

/// Runs a task's jobs on one NIO event loop, so that a task and its channel share a thread: data read by the channel
/// resumes the task in the same event-loop tick instead of waking a thread of the global pool, and a write goes out
/// without a hop back. Used for each pop3d session (which must then not block: file and password work runs on thread
/// pools and is awaited) and for each account `pop3 fetch` downloads (whose event loop serves only its connection,
/// so that the file writes it does inline delay only its own reads).
public final class EventLoopTaskExecutor: TaskExecutor {
    public let eventLoop: any EventLoop

    public init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
