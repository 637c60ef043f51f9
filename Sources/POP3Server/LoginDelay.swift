import NIOConcurrencyHelpers

/// RFC 2449 §6.5 LOGIN-DELAY, enforced (`policy.login_delay`): a user who logged in less than `delay` ago gets
/// `-ERR [LOGIN-DELAY]` before the password is checked, on every listener of the server. Kept in memory: a
/// restart forgets it (the delay is a courtesy to the server, not a security control). The clock is injected.
public final class LoginDelay: Sendable {
    public let delay: Duration
    private let now: @Sendable () -> ContinuousClock.Instant
    private let lastLogin = NIOLockedValueBox<[String: ContinuousClock.Instant]>([:])
    /// Entries are pruned when the table grows past this many (each older than `delay` is forgotten).
    static let pruneThreshold = 10_000

    public init(delay: Duration, now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        self.delay = delay
        self.now = now
    }

    public var isEnabled: Bool { self.delay > .zero }

    /// Whether `user` may log in now.
    public func mayLogIn(_ user: String) -> Bool {
        guard self.isEnabled else { return true }
        let now = self.now()
        return self.lastLogin.withLockedValue { table in
            guard let last = table[user] else { return true }
            return now - last >= self.delay
        }
    }

    /// `user` has just logged in.
    public func recordLogin(_ user: String) {
        guard self.isEnabled else { return }
        let now = self.now()
        self.lastLogin.withLockedValue { table in
            table[user] = now
            if table.count > Self.pruneThreshold {
                table = table.filter { now - $0.value < self.delay }
            }
        }
    }

    var tracked: Int { self.lastLogin.withLockedValue { $0.count } }
}
