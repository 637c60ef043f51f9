/// Every limit on untrusted input, in one place, with its source.
///
/// Each value is a default: the server and client configurations copy these and may override them.
public enum POP3Defaults {
    /// Maximum length of a command line, including the terminating CRLF.
    /// - SeeAlso: [RFC 2449 §4](https://www.rfc-editor.org/rfc/rfc2449#section-4): "a command line MUST NOT exceed 255 octets, including the terminating CRLF".
    public static let maximumCommandLineLength = 255

    /// Maximum length of a SASL client response line (RFC 5034 §4 allows responses longer than a command line).
    /// - SeeAlso: [RFC 5034 §4](https://www.rfc-editor.org/rfc/rfc5034#section-4)
    public static let maximumSASLLineLength = 8_192

    /// Maximum length of a server response line, including CRLF (client side).
    /// - SeeAlso: [RFC 2449 §4](https://www.rfc-editor.org/rfc/rfc2449#section-4): "the maximum length of the first line of a response … 512 octets".
    public static let maximumResponseLineLength = 512

    /// Lines a client accepts in a LIST or UIDL listing (one per message; a million messages is far beyond any real
    /// maildrop and about 100 MB of listing in memory). A server that sends more fails the connection.
    public static let maximumListingLines = 1_000_000

    /// Lines a client accepts in a CAPA reply (real servers send about ten).
    public static let maximumCapabilityLines = 1_000

    /// Bad commands (unknown, malformed, wrong state, over-long) tolerated before login; the next one closes the connection.
    /// Dovecot's pop3-login uses 3 (`CLIENT_MAX_BAD_COMMANDS`); ALPACA §5 shows why this must be small.
    public static let maximumBadCommandsBeforeLogin = 3

    /// Bad commands tolerated after login before the connection is closed.
    public static let maximumBadCommandsAfterLogin = 20
    /// A session lists at most this many messages, the oldest first; the rest appear once the user has deleted some
    /// (docs/security-cases.md 69: a huge maildrop costs bounded listing time, and our own client's listing limit is the same).
    public static let maximumMaildropMessages = 1_000_000

    /// Time a client has from connecting to logging in.
    public static let preAuthenticationTimeout: Duration = .seconds(60)

    /// Inactivity allowed in TRANSACTION state.
    /// - SeeAlso: [RFC 1939 §3](https://www.rfc-editor.org/rfc/rfc1939#section-3): "such a timer MUST be of at least 10 minutes' duration".
    public static let idleTimeout: Duration = .seconds(600)

    /// Time allowed for a TLS handshake (implicit TLS and after STLS).
    public static let handshakeTimeout: Duration = .seconds(10)

    /// Concurrent connections from one client address (IPv6: per /48).
    public static let maximumConnectionsPerAddress = 1_024

    /// Concurrent connections in total.
    public static let maximumConnections = 16_384

    /// Unique-id length bounds.
    /// - SeeAlso: [RFC 1939 §7 UIDL](https://www.rfc-editor.org/rfc/rfc1939#page-12): "1 to 70 characters … in the range 0x21 to 0x7E".
    public static let uniqueIDLengthRange = 1...70
}
