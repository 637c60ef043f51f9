/// When each message of a user was first retrieved (RETR), for EXPIRE (RFC 2449 §6.7). A store of these belongs
/// with the mail: files in `state_dir` beside Maildirs (`RetrievalLog`), the messages' own rows in PostgreSQL (so
/// that every node sees the same times).
///
/// A failure to record makes a message expire later, never sooner; callers log it and go on.
public protocol RetrievalTimes: Sendable {
    /// UIDL → first retrieval (seconds since the epoch) of `user`'s messages that have one.
    func firstRetrievals(user: String) async throws -> [String: Int64]
    /// Records the times of `log` (the whole log, as `firstRetrievals` returned it plus this session's first
    /// retrievals, without messages that are gone). An existing earlier time is kept.
    func recordFirstRetrievals(_ log: [String: Int64], user: String) async throws
}
