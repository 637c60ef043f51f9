import POP3Client
import POP3Core
import SystemIO

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Why an account's fetch failed, in one place for the whole client: every error a fetch can meet (connection,
/// TLS, the server's replies, credentials, OAuth 2.0, local storage, the accounts file) maps to a kind from a fixed
/// set, the message the user reads, and whether running again later can succeed without anyone changing anything
/// (what a polling fetch retries, and what it reports as a problem to fix). The kind's raw value is the label
/// logs, JSON output and metrics use: bounded, and never holding a user name, address or server text.
public struct FetchFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        /// No connection, the connection dropped, or the server did not answer in time.
        case connection
        /// TLS failed: handshake, certificate, version, ALPN, or STLS refused or attacked.
        case tls
        /// The server refused the credentials (or the mechanism asked for is not offered).
        case authentication
        /// The maildrop is in use or logged into too recently ([IN-USE], [LOGIN-DELAY]).
        case serverBusy = "server_busy"
        /// The server says its trouble is temporary ([SYS/TEMP]).
        case serverTemporary = "server_temporary"
        /// The server refused a command for a lasting reason ([SYS/PERM] or no code).
        case serverRefused = "server_refused"
        /// The server broke the protocol, or failed SCRAM's proof that it knows the password (a possible impostor).
        case protocolViolation = "protocol"
        /// The password source (file, command, prompt) or the OAuth 2.0 token store or authorization server.
        case credentials
        /// Storing locally failed: the file system, the mbox lock, the delivery command, the journal.
        case localStorage = "local_storage"
        /// Another fetch of the same account holds its lock.
        case accountBusy = "account_busy"
        /// The accounts file or the options do not describe a fetch that can run.
        case configuration
        /// Anything not classified above (reported with its text; a bug if it is ever seen).
        case other
    }

    public var kind: Kind
    /// For the user: what failed and, where it helps, what to do.
    public var message: String
    /// Running again later may succeed without any change (the network, the server or a lock may recover).
    public var isTemporary: Bool

    public init(kind: Kind, message: String, isTemporary: Bool) {
        self.kind = kind
        self.message = message
        self.isTemporary = isTemporary
    }

    public var description: String { self.message }

    /// The failure `error` stands for.
    public init(_ error: any Error) {
        let message = "\(error)"
        switch error {
        case let failure as FetchFailure:
            self = failure
        case let client as POP3ClientError:
            self.init(kind: Self.kind(of: client), message: message, isTemporary: Self.isTemporary(client))
        case let lock as AccountLockError where lock == .busy:
            self.init(kind: .accountBusy, message: message, isTemporary: true)
        case let file as FileSystemError:
            // A full disk or quota may clear; a missing folder or a permission needs someone to act.
            self.init(kind: .localStorage, message: message, isTemporary: [ENOSPC, EDQUOT, EINTR, EAGAIN, EMFILE, ENFILE].contains(file.errno))
        case let retriever as MailRetrieverError:
            let temporary: Bool
            switch retriever {
            case .mboxLockTimeout, .mdaFailed: temporary = true
            case .alreadyStored, .notRecovered, .sinkClosed, .journalUnreadable, .spawnFailed: temporary = false
            }
            self.init(kind: .localStorage, message: message, isTemporary: temporary)
        case is PasswordError:
            self.init(kind: .credentials, message: message, isTemporary: false)
        case let oauth as OAuth2Error:
            let temporary: Bool
            switch oauth {
            case .http, .server: temporary = true
            case .notLoggedIn, .refreshRefused, .denied, .expired, .tokenStore: temporary = false
            }
            self.init(kind: .credentials, message: message, isTemporary: temporary)
        case is FetchSetupError, is AccountsFileError, is POP3URL.ParseError:
            self.init(kind: .configuration, message: message, isTemporary: false)
        case is DeadlineExceeded:
            self.init(kind: .connection, message: message, isTemporary: true)
        default:
            self.init(kind: .other, message: message, isTemporary: false)
        }
    }

    private static func kind(of error: POP3ClientError) -> Kind {
        switch error {
        case .connectionFailed, .timeout, .connectionClosed: .connection
        case .tlsFailed, .stlsNotOffered, .stlsRefused, .stlsResponseInjection, .alpnMismatch: .tls
        case .protocolViolation, .serverAuthenticationFailed: .protocolViolation
        case .noUsableMechanism, .mechanismNotOffered: .authentication
        case .authenticationFailed(let code, _), .commandFailed(_, let code, _):
            switch code {
            case .inUse, .loginDelay: .serverBusy
            case .sysTemp: .serverTemporary
            case .sysPerm: .serverRefused
            case .auth, .utf8, nil:
                if case .authenticationFailed = error { .authentication } else { .serverRefused }
            }
        }
    }

    /// RFC 3206: [SYS/TEMP], [IN-USE] and [LOGIN-DELAY] say "later"; a refused password, a refused certificate or
    /// a broken protocol do not fix themselves. A connection that fails may.
    private static func isTemporary(_ error: POP3ClientError) -> Bool {
        switch Self.kind(of: error) {
        case .connection, .serverBusy, .serverTemporary: true
        default: false
        }
    }
}
