/// When each account of `pop3 fetch --daemon` is polled next: every `interval` after a poll that worked; after
/// failures, `interval` doubled per failure in a row, up to an hour, reset by the next success. A failing account
/// never delays the others (each has its own time). Pure: every call takes the current time, so tests drive it with
/// a fake clock.
public struct FetchSchedule: Sendable {
    public typealias Instant = ContinuousClock.Instant
    public static let maximumBackoff: Duration = .seconds(3600)

    public struct Entry: Sendable, Equatable {
        public var interval: Duration
        public var nextDue: Instant
        public var failures = 0
        public var running = false
    }

    public private(set) var entries: [Entry]

    /// Every account is due at once.
    public init(intervals: [Duration], now: Instant) {
        self.entries = intervals.map { Entry(interval: $0, nextDue: now) }
    }

    /// The accounts due now that are not already being polled, in order.
    public func due(now: Instant) -> [Int] {
        self.entries.indices.filter { !self.entries[$0].running && self.entries[$0].nextDue <= now }
    }

    public mutating func started(_ index: Int) { self.entries[index].running = true }

    /// A poll ended: the next is one interval away after a success, a doubled one per failure in a row after a
    /// failure (at most an hour). Returns the wait until that next poll.
    @discardableResult
    public mutating func finished(_ index: Int, success: Bool, now: Instant) -> Duration {
        var entry = self.entries[index]
        entry.running = false
        entry.failures = success ? 0 : entry.failures + 1
        let wait = Self.wait(interval: entry.interval, failures: entry.failures)
        entry.nextDue = now + wait
        self.entries[index] = entry
        return wait
    }

    /// `interval` after success; `interval × 2^failures` (at most an hour, never less than the interval) after
    /// failures.
    public static func wait(interval: Duration, failures: Int) -> Duration {
        guard failures > 0 else { return interval }
        var wait = interval
        for _ in 0..<min(failures, 40) {
            wait = wait * 2
            if wait >= Self.maximumBackoff { return max(Self.maximumBackoff, interval) }
        }
        return wait
    }

    /// SIGUSR1: every account not being polled is due now (a failing one too: the user asked).
    public mutating func pollAll(now: Instant) {
        for index in self.entries.indices where !self.entries[index].running {
            self.entries[index].nextDue = now
        }
    }

    /// When the next idle account falls due (nil while every account is being polled).
    public var nextDue: Instant? {
        self.entries.filter { !$0.running }.map(\.nextDue).min()
    }
}
