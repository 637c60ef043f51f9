import Logging
import MailStore
import POP3Core

/// Every way a step of a POP3 session can fail on the server, and the one place that maps each to its reply (through
/// the session core's `LoginFailure` or a status line), its log level and message, and a bounded label for metrics.
/// The associated text is for the log only; no client ever sees it.
enum SessionFailure: Error, Sendable, Equatable {
    /// Wrong password, unknown user, a SCRAM or OAuth exchange that failed (the reason says which, for the log).
    case credentialsRejected(reason: String)
    /// The same user logged in less than LOGIN-DELAY ago.
    case loginDelay
    case maildropInUse
    /// The credential store (passwd-file, …) could not answer.
    case credentialStoreFailed(String)
    /// A SASL mechanism offered but not runnable (a configuration the server should have refused).
    case mechanismUnavailable(String)
    /// The account's Maildir path cannot be formed (template, home).
    case noMaildir(String)
    case maildropPermanent(String)
    case maildropTemporary(String)
    /// RETR/TOP of a message whose file went away or cannot be read.
    case messageUnavailable(String)
    /// UPDATE could not remove every deleted message.
    case commitFailed(String)
    /// EXPIRE's first-retrieval log could not be read or written: messages expire later, never sooner.
    case retrievalLogFailed(String)

    /// The label for metrics: a fixed set, whatever the text.
    enum Label: String, Sendable, CaseIterable {
        case authFailed = "auth_failed"
        case loginDelay = "login_delay"
        case inUse = "in_use"
        case credentialStore = "credential_store"
        case mechanismUnavailable = "mechanism_unavailable"
        case noMaildir = "no_maildir"
        case maildropPermanent = "maildrop_permanent"
        case maildropTemporary = "maildrop_temporary"
        case messageUnavailable = "message_unavailable"
        case commitFailed = "commit_failed"
        case retrievalLog = "retrieval_log"
    }

    var label: Label {
        switch self {
        case .credentialsRejected: .authFailed
        case .loginDelay: .loginDelay
        case .maildropInUse: .inUse
        case .credentialStoreFailed: .credentialStore
        case .mechanismUnavailable: .mechanismUnavailable
        case .noMaildir: .noMaildir
        case .maildropPermanent: .maildropPermanent
        case .maildropTemporary: .maildropTemporary
        case .messageUnavailable: .messageUnavailable
        case .commitFailed: .commitFailed
        case .retrievalLogFailed: .retrievalLog
        }
    }

    /// A client's doing (notice) or the server's trouble (warning, error).
    var logLevel: Logger.Level {
        switch self {
        case .credentialsRejected, .loginDelay, .maildropInUse: .notice
        case .messageUnavailable, .retrievalLogFailed: .warning
        case .credentialStoreFailed, .mechanismUnavailable, .noMaildir, .maildropPermanent, .maildropTemporary, .commitFailed: .error
        }
    }

    var logMessage: Logger.Message {
        switch self {
        case .credentialsRejected: "login failed"
        case .loginDelay: "login refused: LOGIN-DELAY"
        case .maildropInUse: "maildrop in use"
        case .credentialStoreFailed: "credential check failed"
        case .mechanismUnavailable: "SASL mechanism offered but not available"
        case .noMaildir: "no maildir for user"
        case .maildropPermanent, .maildropTemporary: "cannot open maildrop"
        case .messageUnavailable: "message unavailable"
        case .commitFailed: "commit failed"
        case .retrievalLogFailed: "first-retrieval log unavailable: messages expire later, never sooner"
        }
    }

    /// The detail for the log (already free of secrets; escaped by the logger's caller where it holds client text).
    var detail: String? {
        switch self {
        case .credentialsRejected(let text), .credentialStoreFailed(let text), .mechanismUnavailable(let text),
            .noMaildir(let text), .maildropPermanent(let text), .maildropTemporary(let text), .messageUnavailable(let text),
            .commitFailed(let text), .retrievalLogFailed(let text):
            text
        case .loginDelay, .maildropInUse:
            nil
        }
    }

    /// How a failed login is answered (RFC 3206 / RFC 2449 response codes, in `ServerSession.loginFailed`); nil for
    /// failures that are not a login's.
    var loginFailure: ServerSession.LoginFailure? {
        switch self {
        case .credentialsRejected, .mechanismUnavailable: .invalidCredentials
        case .loginDelay: .loginDelay
        case .maildropInUse: .maildropInUse
        case .credentialStoreFailed, .maildropTemporary: .temporary
        case .noMaildir, .maildropPermanent: .permanent
        case .messageUnavailable, .commitFailed, .retrievalLogFailed: nil
        }
    }

    /// The reply to RETR/TOP of a message that cannot be read.
    static let messageUnavailableReply = StatusResponse.err("Message is no longer available.", code: .sysTemp)

    /// Opening a maildrop failed: the store's error as a session failure.
    init(opening error: any Error) {
        switch error {
        case MaildropError.inUse: self = .maildropInUse
        case MaildropError.permanent(let reason): self = .maildropPermanent(reason)
        case MaildropError.temporary(let reason): self = .maildropTemporary(reason)
        default: self = .maildropTemporary("\(error)")
        }
    }

    /// Logs the failure once, at its level, with its label.
    func log(_ logger: Logger, user: String?) {
        var metadata: Logger.Metadata = ["failure": "\(self.label.rawValue)"]
        if let user { metadata["user"] = "\(logEscaped(user))" }
        if let detail = self.detail { metadata[self.label == .authFailed ? "reason" : "error"] = "\(detail)" }
        logger.log(level: self.logLevel, self.logMessage, metadata: metadata)
    }
}
