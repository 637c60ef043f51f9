import Synchronization

/// The in-process half of the maildrop lock (RFC 1939 §8): which maildrops this process has open, keyed by path.
/// Costs no file descriptor per session; the `pop3d.lock` dotlock covers other processes.
final class MaildropLockTable: Sendable {
    static let shared = MaildropLockTable()

    private let held = Mutex<Set<String>>([])

    func tryAcquire(_ key: String) -> Bool {
        self.held.withLock { $0.insert(key).inserted }
    }

    func release(_ key: String) {
        _ = self.held.withLock { $0.remove(key) }
    }

    /// One spelling per directory for the table: no trailing slashes, no `//`, no `/./`.
    static func key(for path: String) -> String {
        let absolute = path.hasPrefix("/")
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        let joined = parts.joined(separator: "/")
        return absolute ? "/" + joined : joined
    }
}
