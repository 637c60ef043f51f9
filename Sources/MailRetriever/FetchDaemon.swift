import Foundation
import Synchronization

/// `pop3 fetch --daemon`: polls every account on its interval, each on its own (a slow or failing account delays no
/// other), with `FetchSchedule`'s back-off after failures. `pollNow()` (SIGUSR1) makes every idle account due at
/// once; `stop()` (SIGTERM) lets each fetch in progress finish the message in flight and store it, then `run()`
/// returns. Each account's lock is held only while it is being fetched (by `Fetcher`).
public final class FetchDaemon: Sendable {
    public typealias MakeFetcher = @Sendable (_ job: FetchJob, _ stopRequested: @escaping @Sendable () -> Bool) -> Fetcher

    let jobs: [FetchJob]
    let makeFetcher: MakeFetcher
    let report: @Sendable (String) -> Void
    private let state: Mutex<(schedule: FetchSchedule, stopping: Bool)>
    /// How often a waiting account looks at its time and at `pollNow`/`stop`.
    static let tick: Duration = .milliseconds(100)

    /// `intervals[i]` is `jobs[i]`'s; `report` gets one line per poll that fetched, deleted or failed.
    public init(jobs: [FetchJob], intervals: [Duration], makeFetcher: @escaping MakeFetcher, report: @escaping @Sendable (String) -> Void) {
        precondition(jobs.count == intervals.count)
        self.jobs = jobs
        self.makeFetcher = makeFetcher
        self.report = report
        self.state = Mutex((FetchSchedule(intervals: intervals, now: .now), false))
    }

    public func pollNow() { self.state.withLock { $0.schedule.pollAll(now: .now) } }
    public func stop() { self.state.withLock { $0.stopping = true } }
    var isStopping: Bool { self.state.withLock { $0.stopping } }

    /// Polls until `stop()`, then returns once no fetch is in progress.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            for index in self.jobs.indices {
                group.addTask { await self.poll(index) }
            }
        }
    }

    private func poll(_ index: Int) async {
        let job = self.jobs[index]
        while true {
            let (stopping, due) = self.state.withLock { state -> (Bool, Bool) in
                let due = state.schedule.due(now: .now).contains(index)
                if due && !state.stopping { state.schedule.started(index) }
                return (state.stopping, due)
            }
            if stopping { return }
            guard due else {
                try? await Task.sleep(for: Self.tick)
                continue
            }
            let summary = await self.makeFetcher(job, { [self] in self.isStopping }).run()
            let wait = self.state.withLock { $0.schedule.finished(index, success: summary.error == nil, now: .now) }
            if let line = Self.line(summary, nextIn: wait) { self.report(line) }
        }
    }

    /// The log line of one poll: nil when it fetched and deleted nothing and did not fail.
    static func line(_ summary: FetchSummary, nextIn wait: Duration) -> String? {
        if let error = summary.error {
            return "pop3: \(summary.account): \(error) (next try in \(wait.components.seconds) s)"
        }
        if summary.stopped == true {
            return "pop3: \(summary.account): stopped: \(summary.fetched) fetched and stored, deletions wait for the next run"
        }
        guard summary.fetched > 0 || summary.deleted > 0 || summary.skipped > 0 else { return nil }
        return "pop3: \(summary.account): \(summary.fetched) fetched, \(summary.deleted) deleted, \(summary.skipped) skipped"
    }
}
