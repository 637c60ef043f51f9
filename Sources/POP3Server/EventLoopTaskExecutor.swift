import NIOCore

/// Runs a task's jobs on one NIO event loop, so that a session's task and its channel share a thread: a line read by
/// the channel resumes the session in the same event-loop tick instead of waking a thread of the global pool, and a
/// reply goes out without a hop back. The session must then not block: file and password work already runs on
/// thread pools and is awaited.
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
