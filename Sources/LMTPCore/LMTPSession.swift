/// The LMTP server session as a value: it takes parsed events and returns actions (replies to send, a recipient
/// to look up, message content to receive, a transaction to deliver). It does no I/O and holds no message bytes;
/// the server drives it and owns the spool.
///
/// RFC 2033 §4.2: after the message, one reply per accepted recipient, in RCPT order (the same address twice gets
/// two). DATA with no accepted recipient gets 503. A transaction is DATA or BDAT (RFC 3030), never both.
public struct LMTPSession: Sendable {
    public struct Configuration: Sendable, Equatable {
        /// The name in the greeting, in LHLO's reply and in Received: lines.
        public var hostname: String
        /// Announced as SIZE; larger messages get 552 5.3.4 (`limits.message_size`).
        public var maximumMessageSize: Int
        /// Accepted recipients per transaction; the next gets 452 4.5.3 (`lmtp.max_recipients`).
        public var maximumRecipients: Int
        /// Bad commands (unknown, malformed, out of order, over-long) before the connection is closed with 421.
        public var maximumBadCommands: Int

        public init(hostname: String, maximumMessageSize: Int = LMTPDefaults.maximumMessageSize, maximumRecipients: Int = LMTPDefaults.maximumRecipients, maximumBadCommands: Int = LMTPDefaults.maximumBadCommands) {
            self.hostname = hostname
            self.maximumMessageSize = maximumMessageSize
            self.maximumRecipients = maximumRecipients
            self.maximumBadCommands = maximumBadCommands
        }
    }

    /// One accepted recipient: the address as given and the account it resolved to.
    public struct Recipient: Sendable, Equatable {
        public var address: String
        public var account: String
        public init(address: String, account: String) {
            self.address = address
            self.account = account
        }
    }

    /// A complete mail transaction, ready to deliver.
    public struct Transaction: Sendable, Equatable {
        public var sender: String
        public var parameters: LMTPCommand.MailParameters
        public var recipients: [Recipient]
        /// The client's LHLO name, for the Received: line.
        public var clientName: String
    }

    public enum Action: Sendable, Equatable {
        case reply(LMTPReply)
        /// Resolve the address to an account, then call `recipientLookedUp`.
        case lookUp(address: String)
        /// Switch the input to dot-terminated message content (354 is sent in the reply before this).
        case receiveData
        /// Read exactly `size` octets of BDAT content; when `discard`, read and drop them (the command failed) and
        /// call `contentEnded` all the same.
        case receiveChunk(size: Int, discard: Bool)
        /// The message is complete: store one copy per recipient, then call `delivered` with one reply each.
        case deliver(Transaction)
        case close
    }

    private enum State: Sendable, Equatable {
        case start
        case ready
        /// MAIL given; `bdat` once a BDAT chunk was accepted.
        case mail(bdat: Bool)
        case data
        case chunk(last: Bool, discard: LMTPReply?)
        case lookingUp(String)
        case delivering
        case closed
    }

    public let configuration: Configuration
    private var state = State.start
    private var clientName = ""
    private var sender = ""
    private var parameters = LMTPCommand.MailParameters()
    private var recipients: [Recipient] = []
    public private(set) var badCommands = 0

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    public var greeting: LMTPReply { LMTPReply(220, nil, "\(self.configuration.hostname) LMTP ready") }

    /// The capabilities LHLO announces, in order.
    public var capabilities: [String] {
        ["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SIZE \(self.configuration.maximumMessageSize)", "CHUNKING", "SMTPUTF8"]
    }

    public var isClosed: Bool { self.state == .closed }

    /// Whether a mail transaction is under way (MAIL given and not yet delivered, refused or reset).
    public var hasOpenTransaction: Bool {
        switch self.state {
        case .mail, .data, .chunk, .lookingUp, .delivering: true
        case .start, .ready, .closed: false
        }
    }

    /// A command line (without CRLF).
    public mutating func receive(line: some Collection<UInt8>) -> [Action] {
        precondition(self.acceptsCommands, "a command while the session waits for \(self.state)")
        switch LMTPCommand.parse(line) {
        case .failure(.unknown): return self.bad(.unknownCommand)
        case .failure(.syntax): return self.bad(.syntaxError)
        case .failure(.unsupportedParameter): return self.bad(.unsupportedParameter)
        case .failure(.needsSMTPUTF8): return self.bad(.utf8Required)
        case .success(let command): return self.handle(command)
        }
    }

    /// A command line longer than the limit (the framer skipped it).
    public mutating func lineTooLong() -> [Action] {
        self.bad(.lineTooLong)
    }

    /// Whether the session is between commands (not waiting for a lookup, content or a delivery).
    public var acceptsCommands: Bool {
        switch self.state {
        case .start, .ready, .mail: true
        default: false
        }
    }

    private mutating func handle(_ command: LMTPCommand) -> [Action] {
        switch command {
        case .lhlo(let name):
            self.clientName = name
            self.resetTransaction()
            self.state = .ready
            let lines = [self.configuration.hostname] + self.capabilities
            return [.reply(LMTPReply(code: 250, enhanced: nil, lines: lines))]
        case .smtpGreeting:
            return self.bad(.useLHLO)
        case .quit:
            self.state = .closed
            return [.reply(.bye), .close]
        case .noop:
            return [.reply(.ok)]
        case .help:
            return [.reply(LMTPReply(214, "2.0.0", "Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"))]
        case .vrfy:
            return [.reply(.vrfyDisabled)]
        case .rset:
            self.resetTransaction()
            if self.state != .start { self.state = .ready }
            return [.reply(.reset)]
        case .mail(let from, let parameters):
            switch self.state {
            case .start: return self.bad(.needLHLO)
            case .mail: return self.bad(.nestedMail)
            default: break
            }
            if let size = parameters.size, size > self.configuration.maximumMessageSize {
                return [.reply(.messageTooLarge)]
            }
            self.sender = from
            self.parameters = parameters
            self.recipients = []
            self.state = .mail(bdat: false)
            return [.reply(.senderOK)]
        case .rcpt(let to):
            guard case .mail = self.state else { return self.bad(self.state == .start ? .needLHLO : .needMail) }
            if !self.parameters.smtpUTF8, !to.unicodeScalars.allSatisfy(\.isASCII) { return self.bad(.utf8Required) }
            guard self.recipients.count < self.configuration.maximumRecipients else { return [.reply(.tooManyRecipients)] }
            self.state = .lookingUp(to)
            return [.lookUp(address: to)]
        case .data:
            guard case .mail(let bdat) = self.state else { return self.bad(self.state == .start ? .needLHLO : .needMail) }
            guard !bdat else { return self.bad(.mixedDataAndBDAT) }
            guard !self.recipients.isEmpty else { return self.bad(.needRecipient) }
            self.state = .data
            return [.reply(.startData), .receiveData]
        case .bdat(let size, let last):
            // The chunk follows the command at once (RFC 3030 §2): read it even when the command fails.
            let refusal: LMTPReply?
            switch self.state {
            case .start: refusal = .needLHLO
            case .ready: refusal = .needMail
            case .mail where self.recipients.isEmpty: refusal = .needRecipient
            default: refusal = nil
            }
            if refusal != nil { self.badCommands += 1 }
            self.state = .chunk(last: last, discard: refusal)
            return [.receiveChunk(size: size, discard: refusal != nil)]
        }
    }

    /// The account `lookUp` resolved the address to, or nil for an unknown recipient; `.temporaryFailure` when the
    /// account store could not answer (the recipient is deferred with 451, never refused).
    public mutating func recipientLookedUp(_ account: String?) -> [Action] {
        self.recipientLookedUp(account.map { .found($0) } ?? .unknown)
    }

    public enum RecipientLookup: Sendable, Equatable {
        case found(String)
        case unknown
        case temporaryFailure
    }

    public mutating func recipientLookedUp(_ lookup: RecipientLookup) -> [Action] {
        guard case .lookingUp(let address) = self.state else { preconditionFailure("no lookup pending") }
        self.state = .mail(bdat: false)
        let account: String
        switch lookup {
        case .found(let name): account = name
        case .unknown: return [.reply(.unknownRecipient)]
        case .temporaryFailure: return [.reply(.localError)]
        }
        self.recipients.append(Recipient(address: address, account: account))
        return [.reply(.recipientOK)]
    }

    /// The content of DATA (after the final dot) or of a BDAT chunk has been read; `octets` is its size and
    /// `tooLarge` whether the transaction's content went past the size limit (the server stopped storing it).
    public mutating func contentEnded(octets: Int, tooLarge: Bool) -> [Action] {
        switch self.state {
        case .data:
            return self.finish(tooLarge: tooLarge)
        case .chunk(let last, let refusal):
            if let refusal {
                // A failed BDAT ends the transaction (RFC 3030 §3: the client considers it failed).
                self.resetTransaction()
                self.state = self.clientName.isEmpty ? .start : .ready
                if self.badCommands > self.configuration.maximumBadCommands {
                    self.state = .closed
                    return [.reply(.tooManyBadCommands), .close]
                }
                return [.reply(refusal)]
            }
            if last { return self.finish(tooLarge: tooLarge) }
            self.state = .mail(bdat: true)
            return [.reply(LMTPReply(250, "2.0.0", "\(octets) octets received"))]
        default:
            preconditionFailure("no content pending")
        }
    }

    private mutating func finish(tooLarge: Bool) -> [Action] {
        let transaction = Transaction(sender: self.sender, parameters: self.parameters, recipients: self.recipients, clientName: self.clientName)
        if tooLarge {
            let replies = self.recipients.map { _ in Action.reply(.messageTooLarge) }
            self.resetTransaction()
            self.state = .ready
            return replies
        }
        self.state = .delivering
        return [.deliver(transaction)]
    }

    /// The results of `deliver`, one per recipient in order.
    public mutating func delivered(_ replies: [LMTPReply]) -> [Action] {
        precondition(self.state == .delivering && replies.count == self.recipients.count, "one reply per recipient")
        self.resetTransaction()
        self.state = .ready
        return replies.map { .reply($0) }
    }

    private mutating func resetTransaction() {
        self.sender = ""
        self.parameters = LMTPCommand.MailParameters()
        self.recipients = []
    }

    private mutating func bad(_ reply: LMTPReply) -> [Action] {
        self.badCommands += 1
        if self.badCommands > self.configuration.maximumBadCommands {
            self.state = .closed
            return [.reply(.tooManyBadCommands), .close]
        }
        return [.reply(reply)]
    }
}

/// The LMTP limits' defaults, each with its source.
public enum LMTPDefaults {
    /// `limits.message_size`: 50 MiB, announced with SIZE (RFC 1870).
    public static let maximumMessageSize = 50 << 20
    /// Recipients per transaction: RFC 5321 §4.5.3.1.8 requires accepting at least 100.
    public static let maximumRecipients = 100
    /// Command lines: 1,000 octets including CRLF (RFC 5321 §4.5.3.1.4); longer content lines are accepted.
    public static let maximumCommandLineLength = 1_000
    /// Bad commands before 421 (Postfix's `smtpd_hard_error_limit` is 20).
    public static let maximumBadCommands = 20
    /// Idle time between commands (RFC 5321 §4.5.3.2.7 suggests 5 minutes for the server).
    public static let idleTimeout: Duration = .seconds(300)
    /// Concurrent LMTP connections.
    public static let maximumConnections = 256
}
