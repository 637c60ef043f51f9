import NIOCore

/// One message of a maildrop snapshot, as POP3 presents it.
public struct MaildropMessage: Sendable, Equatable {
    /// The POP3 unique-id (UIDL): 1–70 characters in 0x21…0x7E.
    ///
    /// - SeeAlso: [RFC 1939 §7 (UIDL)](https://www.rfc-editor.org/rfc/rfc1939#page-12)
    public let uniqueID: String
    /// Octets as sent over POP3: the stored file with every bare LF counted as CRLF (CRLF stays, a lone CR stays);
    /// no dot-stuffing, no terminator. This is Dovecot's "virtual size" (`W=`).
    ///
    /// - SeeAlso: [RFC 1939 §5 (STAT, LIST)](https://www.rfc-editor.org/rfc/rfc1939#page-6)
    public let size: Int

    public init(uniqueID: String, size: Int) {
        self.uniqueID = uniqueID
        self.size = size
    }
}

/// The server side of one POP3 session as a pure state machine (RFC 1939 §3).
///
/// It takes events (a command line, a login result, …) and returns the action the driver performs. It does no I/O
/// and keeps the deleted-message set inside the TRANSACTION state, so nothing outside that state can touch it.
public struct ServerSession: Sendable {
    public struct Configuration: Sendable {
        /// Name announced in `IMPLEMENTATION`.
        public var implementation = "swift-pop3"
        /// The connection can be upgraded with STLS (plaintext listener with TLS configured).
        public var stlsAvailable = false
        /// Accept USER/PASS and AUTH PLAIN without TLS. Off by default (RFC 8314 §5, docs/security-cases.md case 8).
        public var allowCleartextAuthentication = false
        public var maximumCommandLineLength = POP3Defaults.maximumCommandLineLength
        public var maximumSASLLineLength = POP3Defaults.maximumSASLLineLength
        public var maximumBadCommandsBeforeLogin = POP3Defaults.maximumBadCommandsBeforeLogin
        public var maximumBadCommandsAfterLogin = POP3Defaults.maximumBadCommandsAfterLogin
        /// Messages a session shows at most (the first ones of the snapshot: the store lists the oldest first).
        public var maximumMessages = POP3Defaults.maximumMaildropMessages
        /// Announced as `LOGIN-DELAY n` when above 0 (RFC 2449 §6.5, `policy.login_delay`); the server enforces it.
        public var loginDelaySeconds = 0
        /// RFC 2449 §6.7 EXPIRE announced before login: days (nil: NEVER), and whether accounts may differ.
        public var expireDays: Int? = nil
        public var expirePerUser = false
        /// RFC 6856 UTF8 and LANG (on by default; `policy.utf8`).
        public var utf8 = true
        /// The SASL mechanisms offered, in CAPA order (`auth.mechanisms`). PLAIN is handled here; the others go to
        /// the driver as `saslStep` actions. Names ending in `-PLUS` (channel binding) are announced only with TLS.
        public var saslMechanisms = ["PLAIN"]

        public init() {}
    }

    /// The kind of a full scan listing.
    public enum ListingKind: Sendable, Equatable { case list, uidl }

    /// Why a login did not lead to TRANSACTION state.
    public enum LoginFailure: Sendable, Equatable {
        case invalidCredentials
        case maildropInUse
        /// The same user logged in less than the announced LOGIN-DELAY ago (RFC 2449 §8.1.1).
        case loginDelay
        case temporary
        case permanent
    }

    public enum Action: Sendable, Equatable {
        case respond(StatusResponse)
        /// A status line followed by server-made lines and the terminating ".".
        case respondLines(StatusResponse, [String])
        /// A status line followed by a LIST or UIDL line per undeleted message; see `writeScanListing`.
        case respondScanListing(StatusResponse, ListingKind)
        /// Verify the credentials, then open and lock the maildrop; report with `loginSucceeded`/`loginFailed`.
        case login(user: String, password: String)
        /// Send the status line, then the message content through a `DotStuffer` with this limit.
        case sendMessage(StatusResponse, index: Int, bodyLineLimit: UInt32?)
        /// Send the status line in plaintext, discard anything the client sent after STLS, start the TLS handshake,
        /// then call `tlsEstablished`.
        case startTLS(StatusResponse)
        /// SASL continuation: `+ ` and the challenge in base64 (an empty challenge for PLAIN).
        case saslContinuation([UInt8])
        /// One step of a multi-step SASL mechanism the driver runs (e.g. SCRAM). `response` is the client's decoded
        /// response, nil when AUTH came without an initial response; `first` starts a new exchange. The driver
        /// answers with `saslChallenge`, `saslAuthenticated` (then `loginSucceeded`/`loginFailed`) or `saslFailed`.
        case saslStep(mechanism: String, response: [UInt8]?, first: Bool)
        /// UPDATE state: delete these messages, release the maildrop, then call `updateFinished`.
        case commit(deleting: [Int])
        case respondAndClose(StatusResponse)
    }

    struct Transaction: Sendable {
        let user: String
        /// The user's EXPIRE (nil: NEVER). With 0, retrieved messages go at QUIT even without DELE.
        var expireDays: Int? = nil
        let messages: [MaildropMessage]
        var deleted: [Bool]
        var deletedCount = 0
        var deletedSize = 0

        init(user: String, messages: [MaildropMessage]) {
            self.user = user
            self.messages = messages
            self.deleted = Array(repeating: false, count: messages.count)
        }

        /// Messages sent whole by RETR in this session (TOP does not count).
        var retrieved: Set<Int> = []

        var remainingCount: Int { self.messages.count - self.deletedCount }
        var remainingSize: Int { self.messages.reduce(0) { $0 + $1.size } - self.deletedSize }
    }

    enum State: Sendable {
        case authorization(pendingUser: String?)
        case saslPlain
        /// Waiting for the client's next response in a driver-run mechanism.
        case saslExchange(mechanism: String)
        /// The driver is working on a step.
        case saslStepping(mechanism: String)
        case loggingIn(user: String)
        case startingTLS
        case transaction(Transaction)
        case update
        case closed
    }

    public let configuration: Configuration
    private var state: State = .authorization(pendingUser: nil)
    public private(set) var tlsActive: Bool
    public private(set) var badCommands = 0
    /// The client sent UTF8 (RFC 6856 §2).
    public private(set) var utf8Mode = false
    private let parser: CommandParser
    /// AUTH with an initial response may be as long as a SASL response: OAuth tokens do not fit 255 octets, and
    /// clients (mpop, Thunderbird) send them inline anyway, as Dovecot accepts.
    private let authParser: CommandParser
    /// The response languages LANG offers: tag and description (RFC 6856 §3).
    public static let languages = [("en", "English")]

    public init(configuration: Configuration, tlsActive: Bool) {
        self.configuration = configuration
        self.tlsActive = tlsActive
        self.parser = CommandParser(maximumLineLength: configuration.maximumCommandLineLength)
        self.authParser = CommandParser(maximumLineLength: max(configuration.maximumCommandLineLength, configuration.maximumSASLLineLength))
    }

    public static let greeting = StatusResponse.ok("swift-pop3 ready.")

    /// The messages RETR sent whole in this session (indices into the snapshot); kept through UPDATE.
    public private(set) var retrievedIndices: Set<Int> = []
    /// The mechanism of the last login attempt: `USER` (USER/PASS) or the SASL mechanism's name.
    public private(set) var loginMechanism: String?
    /// Whether the session was closed for too many bad commands (not by QUIT).
    public private(set) var closedAfterBadCommands = false

    /// The logged-in user, once in TRANSACTION state.
    public var user: String? {
        switch self.state {
        case .transaction(let t): t.user
        case .loggingIn(let user): user
        default: nil
        }
    }

    public var isAuthenticated: Bool {
        if case .transaction = self.state { return true }
        return false
    }

    /// Whether the next line is a SASL response rather than a command (its limit differs).
    public var expectsSASLResponse: Bool {
        switch self.state {
        case .saslPlain, .saslExchange: true
        default: false
        }
    }

    public var maximumLineLength: Int {
        self.expectsSASLResponse ? self.configuration.maximumSASLLineLength : self.configuration.maximumCommandLineLength
    }

    private var mayAuthenticate: Bool { self.tlsActive || self.configuration.allowCleartextAuthentication }

    /// The mechanisms announced now: the configured ones, `-PLUS` only with TLS (there is no channel to bind to).
    public var offeredMechanisms: [String] {
        self.configuration.saslMechanisms.filter { self.tlsActive || !$0.hasSuffix("-PLUS") }
    }

    /// Capabilities for the current state (DESIGN: three lists; STLS only before TLS, USER/SASL only where auth is allowed).
    public var capabilities: [Capability] {
        var caps: [Capability] = [.top, .uidl, .respCodes, .authRespCode, .pipelining]
        if self.mayAuthenticate {
            caps.append(.user)
            caps.append(.sasl(self.offeredMechanisms))
        }
        if !self.tlsActive && self.configuration.stlsAvailable && !self.isAuthenticated {
            caps.append(.stls)
        }
        if self.configuration.utf8 {
            caps.append(.utf8)
            caps.append(.lang)
        }
        if case .transaction(let t) = self.state {
            caps.append(.expire(days: t.expireDays, perUser: false))
        } else {
            caps.append(.expire(days: self.configuration.expireDays, perUser: self.configuration.expirePerUser))
        }
        if self.configuration.loginDelaySeconds > 0 {
            caps.append(.loginDelay(self.configuration.loginDelaySeconds))
        }
        caps.append(.implementation(self.configuration.implementation))
        return caps
    }

    // MARK: Events

    /// A line longer than the framing limit arrived (and was discarded up to its LF).
    public mutating func receiveOverlongLine() -> Action {
        if self.expectsSASLResponse {
            self.state = .authorization(pendingUser: nil)
            return self.badCommand(.err("Authentication failed: response too long.", code: .auth))
        }
        return self.badCommand(.err("Line too long."))
    }

    /// One line from the client, without its line break.
    public mutating func receive(line: ByteBuffer) -> Action {
        switch self.state {
        case .saslPlain: return self.receiveSASLResponse(line, mechanism: nil)
        case .saslExchange(let mechanism): return self.receiveSASLResponse(line, mechanism: mechanism)
        default: break
        }
        let command: Command
        do {
            command = try self.parser.parse(line)
        } catch .lineTooLong where Self.isAuthCommand(line) {
            do {
                command = try self.authParser.parse(line)
            } catch {
                return self.badCommand(Self.response(for: error))
            }
        } catch {
            return self.badCommand(Self.response(for: error))
        }
        return self.receive(command)
    }

    public mutating func receive(_ command: Command) -> Action {
        if case .capa = command {
            return .respondLines(.ok("Capability list follows."), self.capabilities.map(\.description))
        }
        if case .lang(let tag) = command, self.configuration.utf8 {
            return self.language(tag)
        }
        switch self.state {
        case .authorization(let pendingUser):
            return self.authorization(command, pendingUser: pendingUser)
        case .transaction(var transaction):
            let action = self.transaction(command, &transaction)
            self.retrievedIndices = transaction.retrieved
            if case .transaction = self.state { self.state = .transaction(transaction) }
            return action
        case .saslPlain, .saslExchange, .saslStepping, .loggingIn, .startingTLS, .update, .closed:
            // The driver does not feed commands while an operation is in flight.
            return self.badCommand(.err("Command not valid in this state."))
        }
    }

    /// `expireDays`: this user's EXPIRE (nil: NEVER), shown by CAPA from now on.
    public mutating func loginSucceeded(messages: [MaildropMessage], expireDays: Int? = nil) -> Action {
        guard case .loggingIn(let user) = self.state else { preconditionFailure("loginSucceeded outside login") }
        let shown = messages.count > self.configuration.maximumMessages ? Array(messages.prefix(self.configuration.maximumMessages)) : messages
        var transaction = Transaction(user: user, messages: shown)
        transaction.expireDays = expireDays
        self.state = .transaction(transaction)
        return .respond(.ok("Logged in."))
    }

    public mutating func loginFailed(_ failure: LoginFailure) -> Action {
        guard case .loggingIn = self.state else { preconditionFailure("loginFailed outside login") }
        self.state = .authorization(pendingUser: nil)
        switch failure {
        case .invalidCredentials:
            // A failed login counts as a bad command: one connection cannot guess without end (docs/security-cases.md 30).
            return self.badCommand(Self.authenticationFailed, closing: Self.authenticationFailed)
        case .maildropInUse: return .respond(.err("Mailbox is locked by another session.", code: .inUse))
        case .loginDelay: return .respond(.err("Logged in too recently; try again later.", code: .loginDelay))
        case .temporary: return .respond(.err("Temporary server failure, try again later.", code: .sysTemp))
        case .permanent: return .respond(.err("Mailbox is not available.", code: .sysPerm))
        }
    }

    /// The driver's mechanism has a challenge for the client; the next line is the client's response.
    public mutating func saslChallenge(_ challenge: [UInt8]) -> Action {
        guard case .saslStepping(let mechanism) = self.state else { preconditionFailure("saslChallenge outside SASL") }
        self.state = .saslExchange(mechanism: mechanism)
        return .saslContinuation(challenge)
    }

    /// The driver's mechanism authenticated `user`; open the maildrop, then call `loginSucceeded` or `loginFailed`.
    public mutating func saslAuthenticated(user: String) {
        guard case .saslStepping = self.state else { preconditionFailure("saslAuthenticated outside SASL") }
        self.state = .loggingIn(user: user)
    }

    /// The driver's mechanism failed: the same reply and count as a wrong password (docs/security-cases.md).
    public mutating func saslFailed() -> Action {
        guard case .saslStepping = self.state else { preconditionFailure("saslFailed outside SASL") }
        self.state = .authorization(pendingUser: nil)
        return self.badCommand(Self.authenticationFailed, closing: Self.authenticationFailed)
    }

    public mutating func tlsEstablished() {
        precondition({ if case .startingTLS = self.state { true } else { false } }(), "tlsEstablished outside STLS")
        self.tlsActive = true
        // Nothing learned before TLS carries over (docs/security-cases.md case 6).
        self.state = .authorization(pendingUser: nil)
    }

    /// The result of UPDATE; the connection closes after the reply.
    public mutating func updateFinished(success: Bool) -> Action {
        self.state = .closed
        return .respondAndClose(
            success ? .ok("Logging out, messages deleted.") : .err("Some deleted messages were not removed.", code: .sysTemp)
        )
    }

    /// Writes the scan listing lines for LIST or UIDL (undeleted messages only) and the terminating ".".
    public func writeScanListing(_ kind: ListingKind, into buffer: inout ByteBuffer) {
        guard case .transaction(let t) = self.state else { return }
        for (index, message) in t.messages.enumerated() where !t.deleted[index] {
            buffer.writeString(String(index + 1))
            buffer.writeStaticString(" ")
            switch kind {
            case .list: buffer.writeString(String(message.size))
            case .uidl: buffer.writeString(message.uniqueID)
            }
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString(".\r\n")
    }

    // MARK: States

    static let authenticationFailed = StatusResponse.err("Authentication failed.", code: .auth)
    static let cleartextRefused = StatusResponse.err(
        "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.",
        code: .auth
    )

    private mutating func authorization(_ command: Command, pendingUser: String?) -> Action {
        switch command {
        case .user(let name):
            guard self.mayAuthenticate else { return .respond(Self.cleartextRefused) }
            // Same reply for every name: USER never reveals whether an account exists.
            self.state = .authorization(pendingUser: name)
            return .respond(.ok("Send your password."))
        case .pass(let password):
            guard self.mayAuthenticate else { return .respond(Self.cleartextRefused) }
            guard let user = pendingUser else {
                return self.badCommand(.err("No user name given; send USER first."))
            }
            self.state = .loggingIn(user: user)
            self.loginMechanism = "USER"
            return .login(user: user, password: password)
        case .auth(nil, _):
            return .respondLines(.ok("Supported mechanisms follow."), self.mayAuthenticate ? self.offeredMechanisms : [])
        case .auth(let requested?, let initial):
            // Configured mechanisms are accepted even when not announced (a -PLUS one without TLS), so that such a
            // client fails the exchange like a wrong password instead of learning what the server would do.
            guard let mechanism = self.configuration.saslMechanisms.first(where: { $0.uppercased() == requested.uppercased() }) else {
                return self.badCommand(.err("Unsupported authentication mechanism."))
            }
            guard self.mayAuthenticate else { return .respond(Self.cleartextRefused) }
            if mechanism == "PLAIN" {
                guard let initial else {
                    self.state = .saslPlain
                    return .saslContinuation([])
                }
                return self.saslPlain(response: initial)
            }
            var response: [UInt8]?
            if let initial {
                guard let decoded = initial == "=" ? [] : Base64.decode(initial) else {
                    return self.badCommand(.err("Authentication failed: invalid base64 data.", code: .auth))
                }
                response = decoded
            }
            self.state = .saslStepping(mechanism: mechanism)
            self.loginMechanism = mechanism
            return .saslStep(mechanism: mechanism, response: response, first: true)
        case .apop:
            return self.badCommand(.err("APOP is not supported."))
        case .utf8:
            guard self.configuration.utf8 else { return self.badCommand(.err("Unknown command.")) }
            self.utf8Mode = true
            return .respond(.ok("UTF-8 mode on."))
        case .lang:
            return self.badCommand(.err("Unknown command."))
        case .stls:
            if self.tlsActive { return self.badCommand(.err("TLS is already active.")) }
            guard self.configuration.stlsAvailable else { return self.badCommand(.err("STLS is not available.")) }
            self.state = .startingTLS
            return .startTLS(.ok("Begin TLS negotiation now."))
        case .quit:
            self.state = .closed
            return .respondAndClose(.ok("Logging out."))
        case .noop, .stat, .list, .retr, .dele, .rset, .top, .uidl:
            return self.badCommand(.err("Command not valid before login."))
        case .capa:
            preconditionFailure("handled above")
        }
    }

    /// A response line in a SASL exchange: PLAIN's (mechanism nil) or a driver-run mechanism's.
    private mutating func receiveSASLResponse(_ line: ByteBuffer, mechanism: String?) -> Action {
        self.state = .authorization(pendingUser: nil)
        guard line.readableBytes + 2 <= self.configuration.maximumSASLLineLength else {
            return self.badCommand(.err("Authentication failed: response too long.", code: .auth))
        }
        guard let text = String(validating: line.readableBytesView, as: UTF8.self) else {
            return self.badCommand(.err("Authentication failed: invalid base64 data.", code: .auth))
        }
        if text == "*" {
            return .respond(.err("Authentication cancelled."))
        }
        guard let mechanism else { return self.saslPlain(response: text) }
        // An empty line answers a challenge with nothing (e.g. after SCRAM's server-final message).
        guard let decoded = text.isEmpty || text == "=" ? [] : Base64.decode(text) else {
            return self.badCommand(.err("Authentication failed: invalid base64 data.", code: .auth))
        }
        self.state = .saslStepping(mechanism: mechanism)
        return .saslStep(mechanism: mechanism, response: decoded, first: false)
    }

    private mutating func saslPlain(response: String) -> Action {
        let credentials: SASLPlainCredentials
        do {
            credentials = try SASLPlainCredentials.decode(response: response)
        } catch .badBase64 {
            return self.badCommand(.err("Authentication failed: invalid base64 data.", code: .auth))
        } catch {
            return self.badCommand(.err("Authentication failed: malformed PLAIN response.", code: .auth))
        }
        // No proxy authorisation: an authorisation identity, if given, must be the user itself.
        guard credentials.authorizationID.isEmpty || credentials.authorizationID == credentials.authenticationID else {
            return .respond(Self.authenticationFailed)
        }
        self.state = .loggingIn(user: credentials.authenticationID)
        self.loginMechanism = "PLAIN"
        return .login(user: credentials.authenticationID, password: credentials.password)
    }

    private mutating func transaction(_ command: Command, _ t: inout Transaction) -> Action {
        /// Runs `body` with the index of an existing, undeleted message, or answers why there is none.
        func withMessage(_ number: MessageNumber, _ body: (Int) -> Action) -> Action {
            let index = number.index
            guard index < t.messages.count else { return .respond(.err("No such message.")) }
            guard !t.deleted[index] else { return .respond(.err("Message is deleted.")) }
            return body(index)
        }
        switch command {
        case .stat:
            return .respond(.ok("\(t.remainingCount) \(t.remainingSize)"))
        case .list(nil):
            return .respondScanListing(.ok("\(t.remainingCount) messages (\(t.remainingSize) octets)"), .list)
        case .list(let number?):
            return withMessage(number) { index in .respond(.ok("\(number) \(t.messages[index].size)")) }
        case .uidl(nil):
            return .respondScanListing(.ok("Unique-ID listing follows."), .uidl)
        case .uidl(let number?):
            return withMessage(number) { index in .respond(.ok("\(number) \(t.messages[index].uniqueID)")) }
        case .retr(let number):
            return withMessage(number) { index in
                t.retrieved.insert(index)
                return .sendMessage(.ok("\(t.messages[index].size) octets"), index: index, bodyLineLimit: nil)
            }
        case .top(let number, let lines):
            return withMessage(number) { index in
                .sendMessage(.ok("Top of message follows."), index: index, bodyLineLimit: lines)
            }
        case .dele(let number):
            return withMessage(number) { index in
                t.deleted[index] = true
                t.deletedCount += 1
                t.deletedSize += t.messages[index].size
                return .respond(.ok("Message \(number) deleted."))
            }
        case .rset:
            t.deleted = Array(repeating: false, count: t.messages.count)
            t.deletedCount = 0
            t.deletedSize = 0
            return .respond(.ok("Maildrop has \(t.remainingCount) messages (\(t.remainingSize) octets)."))
        case .noop:
            return .respond(.ok(""))
        case .quit:
            self.state = .update
            // EXPIRE 0 (RFC 2449 §6.7): what was retrieved goes too, DELE or not.
            let expiring = t.expireDays == 0 ? t.retrieved : []
            return .commit(deleting: t.deleted.indices.filter { t.deleted[$0] || expiring.contains($0) })
        case .user, .pass, .auth, .apop, .stls, .utf8, .lang:
            // UTF8 only before login (RFC 6856 §2); LANG is answered above when offered.
            return self.badCommand(.err("Command not valid in this state."))
        case .capa:
            preconditionFailure("handled above")
        }
    }

    /// LANG (RFC 6856 §3): with no argument the list of languages; with a tag, that language if offered, `*` the
    /// default. Valid in any state.
    private mutating func language(_ tag: String?) -> Action {
        guard let tag else {
            return .respondLines(.ok("Language listing follows."), Self.languages.map { "\($0.0) \($0.1)" })
        }
        if tag == "*" || Self.languages.contains(where: { $0.0.lowercased() == tag.lowercased() }) {
            return .respond(.ok("Language changed to \(Self.languages[0].0)."))
        }
        return self.badCommand(.err("Unsupported language."))
    }

    /// Counts a bad command; past the limit for the state, answers with `closing` and ends the connection.
    private mutating func badCommand(_ response: StatusResponse, closing: StatusResponse = .err("Too many invalid commands.")) -> Action {
        self.badCommands += 1
        let limit =
            self.isAuthenticated
            ? self.configuration.maximumBadCommandsAfterLogin : self.configuration.maximumBadCommandsBeforeLogin
        if self.badCommands >= limit {
            self.state = .closed
            self.closedAfterBadCommands = true
            return .respondAndClose(closing)
        }
        return .respond(response)
    }

    static func isAuthCommand(_ line: ByteBuffer) -> Bool {
        guard let prefix = line.getBytes(at: line.readerIndex, length: 5) else { return false }
        return prefix[..<4].map { $0 & 0xDF } == Array("AUTH".utf8) && prefix[4] == UInt8(ascii: " ")
    }

    /// The one place that maps a parse error to the wire. No reply contains client bytes.
    static func response(for error: CommandParseError) -> StatusResponse {
        switch error {
        case .lineTooLong: .err("Line too long.")
        case .empty: .err("Empty command.")
        case .containsNUL: .err("NUL byte in command.")
        case .containsControl: .err("Control character in command.")
        case .invalidUTF8: .err("Invalid UTF-8 in command.")
        case .unknownCommand: .err("Unknown command.")
        case .syntax: .err("Invalid arguments.")
        case .noSuchMessage: .err("No such message.")
        }
    }
}
