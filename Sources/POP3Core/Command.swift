import NIOCore

/// A client command (RFC 1939, RFC 2449, RFC 2595, RFC 5034).
public enum Command: Sendable, Equatable {
    case user(String)
    case pass(String)
    case stat
    /// `LIST [msg]`
    case list(MessageNumber?)
    case retr(MessageNumber)
    case dele(MessageNumber)
    case noop
    case rset
    case quit
    /// `TOP msg n`
    case top(MessageNumber, lines: UInt32)
    /// `UIDL [msg]`
    case uidl(MessageNumber?)
    case capa
    case stls
    /// `AUTH [mechanism [initial-response]]`
    case auth(mechanism: String?, initialResponse: String?)
    /// `APOP name digest`: recognised so that it gets a precise refusal; not offered.
    case apop
    /// RFC 6856 §2: UTF-8 mode.
    case utf8
    /// RFC 6856 §3: list the response languages (nil) or choose one (a tag or `*`).
    case lang(String?)

    /// The command keyword, for logs and metrics (bounded set, no client data).
    public var keyword: String {
        switch self {
        case .user: "USER"
        case .pass: "PASS"
        case .stat: "STAT"
        case .list: "LIST"
        case .retr: "RETR"
        case .dele: "DELE"
        case .noop: "NOOP"
        case .rset: "RSET"
        case .quit: "QUIT"
        case .top: "TOP"
        case .uidl: "UIDL"
        case .capa: "CAPA"
        case .stls: "STLS"
        case .auth: "AUTH"
        case .apop: "APOP"
        case .utf8: "UTF8"
        case .lang: "LANG"
        }
    }
}

extension Command: CustomStringConvertible {
    /// A description safe for logs: credentials are redacted.
    public var description: String {
        switch self {
        case .user(let name): "USER \(name)"
        case .pass: "PASS <redacted>"
        case .auth(let mechanism, let initial):
            "AUTH" + (mechanism.map { " \($0)" } ?? "") + (initial == nil ? "" : " <redacted>")
        case .list(let n): n.map { "LIST \($0)" } ?? "LIST"
        case .uidl(let n): n.map { "UIDL \($0)" } ?? "UIDL"
        case .retr(let n): "RETR \(n)"
        case .dele(let n): "DELE \(n)"
        case .top(let n, let lines): "TOP \(n) \(lines)"
        default: self.keyword
        }
    }
}

/// Why a command line was rejected. None of these carries client bytes, so no reply can echo input (ALPACA).
public enum CommandParseError: Error, Sendable, Equatable {
    case lineTooLong(length: Int, maximum: Int)
    case empty
    case containsNUL
    /// A C0 control other than TAB (a lone CR, ESC, …) or DEL: no POP3 command has one (docs/security-cases.md 38).
    case containsControl
    case invalidUTF8
    case unknownCommand
    /// Arguments missing, extra or malformed.
    case syntax
    /// A message number that is 0 or does not fit: it names no message.
    case noSuchMessage
}

/// Parses one command line (without its line break).
///
/// ABNF (RFC 2449 §3): `command = keyword *(SP param) CRLF`, keywords case-insensitive.
/// A failed parse consumes the whole line: the caller has already split at LF, so garbage never
/// desynchronises the stream.
public struct CommandParser: Sendable {
    public var maximumLineLength: Int

    public init(maximumLineLength: Int = POP3Defaults.maximumCommandLineLength) {
        self.maximumLineLength = maximumLineLength
    }

    public func parse(_ line: ByteBuffer) throws(CommandParseError) -> Command {
        try self.parse(line.readableBytesView)
    }

    public func parse(_ line: some Collection<UInt8>) throws(CommandParseError) -> Command {
        // The limit counts the CRLF the client sent (RFC 2449 §4).
        guard line.count + 2 <= self.maximumLineLength else {
            throw .lineTooLong(length: line.count + 2, maximum: self.maximumLineLength)
        }
        guard !line.contains(0) else { throw .containsNUL }
        guard !line.contains(where: { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F }) else { throw .containsControl }
        guard let text = String(validating: line, as: UTF8.self) else { throw .invalidUTF8 }
        guard !text.isEmpty else { throw .empty }

        let keywordEnd = text.firstIndex(of: " ") ?? text.endIndex
        let keyword = text[..<keywordEnd].uppercased()
        // The rest after exactly one space: PASS and USER take it whole (passwords may contain spaces).
        let rest = keywordEnd == text.endIndex ? Substring() : text[text.index(after: keywordEnd)...]
        let args = rest.split(separator: " ", omittingEmptySubsequences: true)

        func noArguments(_ command: Command) throws(CommandParseError) -> Command {
            guard args.isEmpty else { throw .syntax }
            return command
        }

        switch keyword {
        case "USER":
            let name = rest.trimmingSpaces()
            // No control characters in a user name: they could forge log lines (docs/security-cases.md 34).
            guard !name.isEmpty, !name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
                throw .syntax
            }
            return .user(String(name))
        case "PASS":
            guard !rest.isEmpty else { throw .syntax }
            return .pass(String(rest))
        case "STAT": return try noArguments(.stat)
        case "NOOP": return try noArguments(.noop)
        case "RSET": return try noArguments(.rset)
        case "QUIT": return try noArguments(.quit)
        case "CAPA": return try noArguments(.capa)
        case "STLS": return try noArguments(.stls)
        case "LIST", "UIDL":
            guard args.count <= 1 else { throw .syntax }
            let number = try args.first.map { arg throws(CommandParseError) in try Self.messageNumber(arg) }
            return keyword == "LIST" ? .list(number) : .uidl(number)
        case "RETR", "DELE":
            guard args.count == 1 else { throw .syntax }
            let number = try Self.messageNumber(args[0])
            return keyword == "RETR" ? .retr(number) : .dele(number)
        case "TOP":
            guard args.count == 2 else { throw .syntax }
            let number = try Self.messageNumber(args[0])
            guard let lines = parseDecimal(args[1].utf8) else { throw .syntax }
            return .top(number, lines: lines)
        case "AUTH":
            guard args.count <= 2 else { throw .syntax }
            return .auth(
                mechanism: args.first.map { $0.uppercased() },
                initialResponse: args.count == 2 ? String(args[1]) : nil
            )
        case "APOP":
            return .apop
        case "UTF8":
            return try noArguments(.utf8)
        case "LANG":
            guard args.count <= 1 else { throw .syntax }
            // A language tag (RFC 5646: letters, digits, hyphens) or "*".
            if let tag = args.first, tag != "*", !tag.utf8.allSatisfy({ ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }) || (args.first?.count ?? 0) > 35 {
                throw .syntax
            }
            return .lang(args.first.map(String.init))
        default:
            throw .unknownCommand
        }
    }

    static func messageNumber(_ arg: Substring) throws(CommandParseError) -> MessageNumber {
        guard arg.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { throw .syntax }
        // Digits, but 0 or too large to be a message number: no such message.
        guard let value = parseDecimal(arg.utf8), let number = MessageNumber(value) else { throw .noSuchMessage }
        return number
    }
}

extension Substring {
    fileprivate func trimmingSpaces() -> Substring {
        var s = self
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return s
    }
}
