import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// What happens on the server to a message once its local copy is durable.
public enum RetentionPolicy: Sendable, Equatable {
    /// DELE right after delivery (the default).
    case deleteAfterDownload
    /// Never DELE.
    case keep
    /// DELE once the message was first seen by this client at least this many days ago.
    case keepDays(Int)

    /// `--keep` and `--keep-days` together: keep-days wins.
    public init(keep: Bool, keepDays: Int?) {
        if let keepDays {
            self = .keepDays(keepDays)
        } else {
            self = keep ? .keep : .deleteAfterDownload
        }
    }
}

/// Whether a message may be DELE'd now. Only delivered entries are ever deletable; `keepDays(n)` deletes when
/// `now - firstSeen >= n * 86400` (first seen as recorded in the journal, not the message's date).
public func shouldDelete(entry: UIDLJournal.Entry, now: Int64, policy: RetentionPolicy) -> Bool {
    guard entry.delivered else { return false }
    switch policy {
    case .deleteAfterDownload:
        return true
    case .keep:
        return false
    case .keepDays(let days):
        let (span, overflow) = Int64(days).multipliedReportingOverflow(by: 86_400)
        if overflow { return false }
        return now - entry.firstSeen >= span
    }
}

/// The environment variable that moves the retriever's clock (unix seconds), for tests of `--keep-days`.
public let currentTimeEnvironmentVariable = "POP3_NOW"

/// Unix seconds: `POP3_NOW` when set to an integer, else the system clock.
public func currentTime(environment: [String: String] = ProcessInfo.processInfo.environment) -> Int64 {
    if let text = environment[currentTimeEnvironmentVariable], let value = Int64(text) {
        return value
    }
    return Int64(time(nil))
}
