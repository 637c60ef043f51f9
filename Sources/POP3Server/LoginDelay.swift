import MailStorePostgres
import NIOConcurrencyHelpers

/// RFC 2449 §6.5 LOGIN-DELAY, enforced (`policy.login_delay`): a user who logged in less than `delay` ago gets
/// `-ERR [LOGIN-DELAY]` before the password is checked, on every listener of the server. Kept in memory: a
/// restart forgets it (the delay is a courtesy to the server, not a security control). The clock is injected.
/// With the PostgreSQL backend the times are the accounts' rows (`SharedLoginTimes`), the same on every node; this
/// process's table stands in while the database does not answer.
public final class LoginDelay: Sendable {
    private let delayBox: NIOLockedValueBox<Duration>
    /// `policy.login_delay`; a SIGHUP reload may change it.
    public var delay: Duration {
        get { self.delayBox.withLockedValue { $0 } }
        set { self.delayBox.withLockedValue { $0 = newValue } }
    }
    private let shared: SharedLoginTimes?
    private let now: @Sendable () -> ContinuousClock.Instant
    private let lastLogin = NIOLockedValueBox<[String: ContinuousClock.Instant]>([:])
    /// Entries are pruned when the table grows past this many (each older than `delay` is forgotten).
    static let pruneThreshold = 10_000

    public init(delay: Duration, shared: SharedLoginTimes? = nil, now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        self.delayBox = NIOLockedValueBox(delay)
        self.shared = shared
        self.now = now
    }

    /// `mayLogIn`, asking the database when the times are shared.
    public func mayLogInShared(_ user: String) async -> Bool {
        guard self.isEnabled else { return true }
        if let shared = self.shared, let allowed = try? await shared.mayLogIn(user, delay: self.delay) { return allowed }
        return self.mayLogIn(user)
    }

    /// `recordLogin`, in the database too when the times are shared.
    public func recordLoginShared(_ user: String) async {
        guard self.isEnabled else { return }
        self.recordLogin(user)
        try? await self.shared?.recordLogin(user)
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
