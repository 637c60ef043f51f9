import NIOCore
import POP3Core

/// Why a maildrop operation failed. The associated texts are safe to show a client (no paths, no user names);
/// details go to the log where the error is raised.
public enum MaildropError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Another session (in this process or another one) holds the maildrop lock: `-ERR [IN-USE]` (RFC 2449 §8.1.2).
    case inUse
    /// The message file vanished after the snapshot was taken.
    case messageGone
    /// Worth retrying later: `-ERR [SYS/TEMP]` (RFC 3206).
    case temporary(String)
    /// Retrying will not help: `-ERR [SYS/PERM]` (RFC 3206).
    case permanent(String)

    public var description: String {
        switch self {
        case .inUse: return "maildrop in use"
        case .messageGone: return "message no longer available"
        case .temporary(let text): return text
        case .permanent(let text): return text
        }
    }

    /// For logs: the failure class and text.
    public var logDescription: String {
        switch self {
        case .inUse: return "in-use: maildrop locked by another session"
        case .messageGone: return "message-gone: message file vanished"
        case .temporary(let text): return "temporary: \(text)"
        case .permanent(let text): return "permanent: \(text)"
        }
    }
}

/// Opens maildrops. One implementation per storage back end (Maildir, in-memory, later PostgreSQL).
public protocol MaildropProvider: Sendable {
    /// Opens and exclusively locks the maildrop of `user` stored at `path` (a Maildir directory). A missing Maildir
    /// is an empty maildrop (it is created: `new/ cur/ tmp/`, mode 0700).
    ///
    /// Throws `MaildropError.inUse` when another session (this process or another process) holds it.
    ///
    /// - SeeAlso: [RFC 1939 §8](https://www.rfc-editor.org/rfc/rfc1939#section-8) (exclusive-access lock)
    /// `owner` is the account's uid/gid from the passwd-file (nil: the account names none). It is a security input
    /// with no default: each provider says what it does with it (the separated provider accesses the files as that
    /// identity; a provider that runs as this process says so where the server is assembled).
    func openMaildrop(user: String, path: String, owner: MailOwner?) async throws -> any Maildrop
}

/// The system identity an account's mail files belong to (passwd-file uid and gid).
public struct MailOwner: Sendable, Hashable, CustomStringConvertible {
    public var uid: UInt32
    public var gid: UInt32

    public init(uid: UInt32, gid: UInt32) {
        self.uid = uid
        self.gid = gid
    }

    public var description: String { "uid \(self.uid), gid \(self.gid)" }
}

/// An open, locked maildrop: the TRANSACTION state's view of the store.
public protocol Maildrop: AnyObject, Sendable {
    /// Snapshot taken at open; mail delivered later does not appear in it.
    var messages: [MaildropMessage] { get }

    /// Raw bytes of the message as stored (LF or CRLF endings), in chunks of at most `chunkSize` bytes, read lazily
    /// (the next chunk is read only when the consumer asks), so any message size costs bounded memory.
    /// Throws `MaildropError.messageGone` if the message vanished.
    func content(ofMessageAt index: Int, chunkSize: Int) async throws -> MessageContent

    /// UPDATE state: durably deletes the given messages, updates the index, then releases the lock. A message
    /// already gone is not an error.
    ///
    /// - SeeAlso: [RFC 1939 §6](https://www.rfc-editor.org/rfc/rfc1939#section-6)
    func commit(deleting indices: Set<Int>) async throws

    /// Releases the lock without deleting anything. Idempotent; a no-op after `commit`.
    func release() async
}
