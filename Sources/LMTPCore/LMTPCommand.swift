/// An LMTP command line, parsed. LMTP is SMTP (RFC 5321) with LHLO instead of EHLO and one reply per recipient
/// after the message (RFC 2033).
/// - SeeAlso: [RFC 2033](https://www.rfc-editor.org/rfc/rfc2033), [RFC 5321 §4.1](https://www.rfc-editor.org/rfc/rfc5321#section-4.1),
///   [RFC 3030](https://www.rfc-editor.org/rfc/rfc3030) (BDAT), [RFC 1870](https://www.rfc-editor.org/rfc/rfc1870) (SIZE),
///   [RFC 6531](https://www.rfc-editor.org/rfc/rfc6531) (SMTPUTF8)
public enum LMTPCommand: Sendable, Equatable {
    case lhlo(String)
    /// `MAIL FROM:<reverse-path>`; the empty path `<>` is the null sender of bounces.
    case mail(from: String, parameters: MailParameters)
    case rcpt(to: String)
    case data
    case bdat(size: Int, last: Bool)
    case rset
    case noop
    case quit
    case vrfy
    case help
    /// HELO or EHLO: an SMTP client on an LMTP port.
    case smtpGreeting

    /// The ESMTP parameters of MAIL FROM this server understands.
    public struct MailParameters: Sendable, Equatable {
        /// `SIZE=n` (RFC 1870): the size the client announces.
        public var size: Int?
        /// `BODY=7BIT|8BITMIME` (RFC 6152).
        public var eightBit = false
        /// `SMTPUTF8` (RFC 6531).
        public var smtpUTF8 = false
        public init() {}
    }

    /// Why a line is not a command: the reply says which.
    public enum ParseError: Error, Sendable, Equatable {
        case unknown
        case syntax
        case unsupportedParameter
        case needsSMTPUTF8
    }

    /// The longest path in `<…>` (RFC 5321 §4.5.3.1.3: 256 octets including the brackets).
    public static let maximumPathLength = 256
    /// BDAT chunk sizes above this are refused as a syntax error (a number this long is no message).
    public static let maximumChunkSize = Int(Int32.max)

    /// Parses one command line without its CRLF.
    public static func parse(_ line: some Collection<UInt8>) -> Result<LMTPCommand, ParseError> {
        // NUL, CR and LF never belong in a command; neither does invalid UTF-8.
        guard !line.contains(where: { $0 == 0 || $0 == 0x0D || $0 == 0x0A }),
            let text = String(validating: line, as: UTF8.self)
        else { return .failure(.syntax) }
        let verbEnd = text.firstIndex(of: " ") ?? text.endIndex
        let verb = text[..<verbEnd].uppercased()
        let rest = verbEnd < text.endIndex ? String(text[text.index(after: verbEnd)...]) : ""
        switch verb {
        case "LHLO":
            let domain = rest.trimmingSpaces()
            guard !domain.isEmpty, !domain.contains(" "), domain.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7F })
            else { return .failure(.syntax) }
            return .success(.lhlo(domain))
        case "HELO", "EHLO":
            return .success(.smtpGreeting)
        case "MAIL":
            guard case .success(let (path, parameters)) = Self.path(after: "FROM:", in: rest) else { return .failure(.syntax) }
            var mail = MailParameters()
            for parameter in parameters {
                let (key, value) = Self.split(parameter)
                switch key {
                case "SIZE":
                    guard let value, value.count <= 18, let size = Int(value), size >= 0 else { return .failure(.syntax) }
                    mail.size = size
                case "BODY":
                    switch value?.uppercased() {
                    case "7BIT": mail.eightBit = false
                    case "8BITMIME": mail.eightBit = true
                    default: return .failure(.unsupportedParameter)
                    }
                case "SMTPUTF8":
                    guard value == nil else { return .failure(.syntax) }
                    mail.smtpUTF8 = true
                default:
                    return .failure(.unsupportedParameter)
                }
            }
            if !mail.smtpUTF8, !path.unicodeScalars.allSatisfy(\.isASCII) { return .failure(.needsSMTPUTF8) }
            return .success(.mail(from: path, parameters: mail))
        case "RCPT":
            guard case .success(let (path, parameters)) = Self.path(after: "TO:", in: rest), !path.isEmpty else {
                return .failure(.syntax)
            }
            // DSN (NOTIFY, ORCPT) is not announced, so no parameter is valid here.
            guard parameters.isEmpty else { return .failure(.unsupportedParameter) }
            return .success(.rcpt(to: path))
        case "DATA":
            return rest.isEmpty ? .success(.data) : .failure(.syntax)
        case "BDAT":
            let words = rest.split(separator: " ", omittingEmptySubsequences: false)
            guard (1...2).contains(words.count), !words[0].isEmpty, words[0].count <= 10,
                words[0].allSatisfy({ $0.isASCII && $0.isNumber }), let size = Int(words[0]), size <= Self.maximumChunkSize
            else { return .failure(.syntax) }
            if words.count == 2 {
                guard words[1].uppercased() == "LAST" else { return .failure(.syntax) }
                return .success(.bdat(size: size, last: true))
            }
            return .success(.bdat(size: size, last: false))
        case "RSET":
            return rest.isEmpty ? .success(.rset) : .failure(.syntax)
        case "NOOP":
            return .success(.noop)
        case "QUIT":
            return rest.isEmpty ? .success(.quit) : .failure(.syntax)
        case "VRFY":
            return rest.isEmpty ? .failure(.syntax) : .success(.vrfy)
        case "HELP":
            return .success(.help)
        default:
            return .failure(.unknown)
        }
    }

    /// `FROM:<path> [params]` → the path without brackets (source route dropped) and the parameter words.
    private static func path(after keyword: String, in text: String) -> Result<(String, [Substring]), ParseError> {
        guard text.uppercased().hasPrefix(keyword) else { return .failure(.syntax) }
        // RFC 5321 has no space after the colon; common clients send one, so accept it.
        let afterColon = text.dropFirst(keyword.count).drop(while: { $0 == " " })
        guard afterColon.first == "<", let close = afterColon.firstIndex(of: ">") else { return .failure(.syntax) }
        var path = afterColon[afterColon.index(after: afterColon.startIndex)..<close]
        guard path.utf8.count + 2 <= Self.maximumPathLength else { return .failure(.syntax) }
        // A source route `@a,@b:user@domain` (RFC 5321 §4.1.2, obsolete) is ignored.
        if path.first == "@" {
            guard let colon = path.firstIndex(of: ":") else { return .failure(.syntax) }
            path = path[path.index(after: colon)...]
        }
        guard Self.isMailbox(path) else { return .failure(.syntax) }
        let after = afterColon[afterColon.index(after: close)...]
        guard after.isEmpty || after.first == " " else { return .failure(.syntax) }
        let parameters = after.split(separator: " ")
        return .success((String(path), parameters))
    }

    /// A mailbox as far as a local delivery agent needs: no spaces or controls, no brackets, at most one `@` outside a
    /// quoted local part. Empty is the null path.
    static func isMailbox(_ path: Substring) -> Bool {
        var inQuotes = false
        var escaped = false
        var ats = 0
        for scalar in path.unicodeScalars {
            if scalar.value < 0x20 || scalar.value == 0x7F { return false }
            if escaped { escaped = false; continue }
            if inQuotes {
                if scalar == "\\" { escaped = true } else if scalar == "\"" { inQuotes = false }
                continue
            }
            switch scalar {
            case "\"": inQuotes = true
            case "@": ats += 1
            case " ", "<", ">", "(", ")", ",", ";", "\\": return false
            case "[" where ats == 0: return false
            default: break
            }
        }
        return !inQuotes && ats <= 1 && !path.hasSuffix("@") && !path.hasPrefix("@")
    }

    private static func split(_ parameter: Substring) -> (String, String?) {
        guard let equals = parameter.firstIndex(of: "=") else { return (parameter.uppercased(), nil) }
        return (parameter[..<equals].uppercased(), String(parameter[parameter.index(after: equals)...]))
    }
}

extension String {
    func trimmingSpaces() -> String {
        String(self.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
