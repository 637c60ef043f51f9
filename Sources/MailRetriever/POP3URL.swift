import POP3Client
/// A POP3 URL: `pop3s://USER@HOST[:PORT]` or `pop3://USER@HOST[:PORT]`.
///
/// The user is required and percent-decoded (`alice%40corp` is `alice@corp`); an optional `;AUTH=MECH` after it
/// names a SASL mechanism (RFC 2384 §3). The host may be an IPv6 literal in brackets (`[::1]`). The port defaults to
/// 995 for `pop3s` and 110 for `pop3`. A password in the URL is refused: passwords come from a file, a command or a
/// prompt, never a command line.
///
/// - SeeAlso: [RFC 2384](https://www.rfc-editor.org/rfc/rfc2384) (POP URL scheme),
///   [RFC 8314 §3.3](https://www.rfc-editor.org/rfc/rfc8314#section-3.3) (pop3s on 995).
public struct POP3URL: Sendable, Hashable, CustomStringConvertible {
    public enum Scheme: String, Sendable, Hashable {
        /// Implicit TLS.
        case pop3s
        /// Plaintext at first: needs STLS or an explicit insecure-plaintext option.
        case pop3
    }

    public var scheme: Scheme
    public var user: String
    /// Without brackets for IPv6 literals.
    public var host: String
    public var port: Int
    /// From `;AUTH=…`; nil means automatic choice.
    public var authMechanism: String?

    public init(scheme: Scheme, user: String, host: String, port: Int? = nil, authMechanism: String? = nil) {
        self.scheme = scheme
        self.user = user
        self.host = host
        self.port = port ?? (scheme == .pop3s ? 995 : 110)
        self.authMechanism = authMechanism
    }

    public var accountKey: AccountKey { AccountKey(user: user, host: host, port: port) }

    public var description: String {
        let hostPart = host.contains(":") ? "[\(host)]" : host
        var text = "\(scheme.rawValue)://\(Self.percentEncode(user))"
        if let authMechanism { text += ";AUTH=\(authMechanism)" }
        return text + "@\(hostPart):\(port)"
    }

    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public var reason: String
        public var description: String { "invalid POP3 URL: \(reason)" }
    }

    public static func parse(_ text: String) throws -> POP3URL {
        func fail(_ reason: String) -> ParseError { ParseError(reason: reason) }
        guard let separator = text.range(of: "://") else {
            throw fail("expected pop3s://USER@HOST[:PORT] or pop3://USER@HOST[:PORT]")
        }
        guard let scheme = Scheme(rawValue: text[..<separator.lowerBound].lowercased()) else {
            throw fail("scheme must be pop3s or pop3")
        }
        var rest = Substring(text[separator.upperBound...])
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        guard !rest.contains("/"), !rest.contains("?"), !rest.contains("#") else {
            throw fail("no path, query or fragment allowed")
        }
        guard let at = rest.lastIndex(of: "@") else {
            throw fail("a user name is required (USER@HOST; write an @ in the user name as %40)")
        }
        var userInfo = rest[..<at]
        let hostPort = rest[rest.index(after: at)...]

        var authMechanism: String?
        if let semicolon = userInfo.firstIndex(of: ";") {
            let parameter = userInfo[userInfo.index(after: semicolon)...]
            guard parameter.lowercased().hasPrefix("auth="), parameter.count > 5 else {
                throw fail("only ;AUTH=MECHANISM may follow the user name")
            }
            let mechanism = String(parameter.dropFirst(5))
            authMechanism = mechanism == "*" ? nil : try percentDecode(mechanism).uppercased()
            userInfo = userInfo[..<semicolon]
        }
        guard !userInfo.contains(":") else {
            throw fail("no password in the URL; use password_file, password_command or the prompt")
        }
        let user = try percentDecode(String(userInfo))
        guard !user.isEmpty else { throw fail("a user name is required") }
        guard !user.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw fail("control characters in the user name")
        }

        var host: Substring
        var portText: Substring?
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { throw fail("unterminated [ in the host") }
            host = hostPort[hostPort.index(after: hostPort.startIndex)..<close]
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw fail("unexpected text after ]") }
                portText = after.dropFirst()
            }
            guard host.contains(":"), host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." || $0 == "%" }) else {
                throw fail("bad IPv6 address in brackets")
            }
        } else {
            if let colon = hostPort.firstIndex(of: ":") {
                host = hostPort[..<colon]
                portText = hostPort[hostPort.index(after: colon)...]
            } else {
                host = hostPort
            }
            guard host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "." || $0 == "_") })
            else { throw fail("bad host name") }
        }
        guard !host.isEmpty else { throw fail("a host is required") }
        var port: Int?
        if let portText {
            guard let value = Int(portText), portText.allSatisfy(\.isASCII), (1...65535).contains(value) else {
                throw fail("port must be 1-65535")
            }
            port = value
        }
        return POP3URL(scheme: scheme, user: user, host: String(host), port: port, authMechanism: authMechanism)
    }

    static func percentDecode(_ text: String) throws -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next(), let low = iterator.next(),
                let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
            else { throw ParseError(reason: "bad percent escape in '\(text)'") }
            bytes.append(value)
        }
        guard let decoded = String(validating: bytes, as: UTF8.self) else {
            throw ParseError(reason: "percent escapes are not UTF-8 in '\(text)'")
        }
        return decoded
    }

    static func percentEncode(_ text: String) -> String {
        var result = ""
        for byte in text.utf8 {
            let unreserved =
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A)
                || (byte >= 0x61 && byte <= 0x7A) || "-._~+".utf8.contains(byte)
            if unreserved {
                result.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                result += "%" + hex2(byte).uppercased()
            }
        }
        return result
    }
}

extension POP3URL {
    /// The login method the URL's `;AUTH=` names (RFC 2384 §3: a SASL mechanism, `*` any, `+APOP`); auto without it.
    public func authentication() throws(ParseError) -> AuthenticationMethod {
        guard let name = self.authMechanism else { return .auto }
        if name == "+APOP" { throw ParseError(reason: ";AUTH=+APOP: APOP (MD5 of a shared secret) is not supported") }
        guard let method = AuthenticationMethod(parsing: name) else {
            throw ParseError(reason: ";AUTH=\(name) is not a mechanism pop3 speaks (\(AuthenticationMethod.allCases.map { $0.rawValue.uppercased() }.joined(separator: ", ")))")
        }
        return method
    }
}
