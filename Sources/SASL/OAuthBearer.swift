/// The client message of OAUTHBEARER (RFC 7628 §3.1) and of XOAUTH2 (Google's and Microsoft's older form), and the
/// server's error challenge. Both carry an OAuth 2.0 bearer token; neither is safe without TLS.
public struct OAuthBearerMessage: Sendable, Equatable, CustomStringConvertible {
    /// The user named in the message (OAUTHBEARER's authzid, XOAUTH2's `user=`), if any.
    public var user: String?
    public var token: String

    public init(user: String?, token: String) {
        self.user = user
        self.token = token
    }

    /// `0x01`, the separator of key=value pairs.
    static let separator: UInt8 = 1

    /// RFC 7628: `n,a=USER,` 0x01 `host=H` 0x01 `port=P` 0x01 `auth=Bearer TOKEN` 0x01 0x01.
    public static func oauthBearer(user: String?, token: String, host: String?, port: Int?) -> [UInt8] {
        var pairs: [String] = []
        if let host { pairs.append("host=\(host)") }
        if let port { pairs.append("port=\(port)") }
        pairs.append("auth=Bearer \(token)")
        let header = GS2Header(binding: .none, authorizationID: user).encoded
        var bytes = Array(header.utf8) + [Self.separator]
        for pair in pairs { bytes += Array(pair.utf8) + [Self.separator] }
        return bytes + [Self.separator]
    }

    /// XOAUTH2: `user=USER` 0x01 `auth=Bearer TOKEN` 0x01 0x01.
    public static func xoauth2(user: String, token: String) -> [UInt8] {
        Array("user=\(user)".utf8) + [Self.separator] + Array("auth=Bearer \(token)".utf8) + [Self.separator, Self.separator]
    }

    /// Parses a client message of `mechanism` (OAUTHBEARER or XOAUTH2). Nil when it is malformed, has no
    /// `auth=Bearer` token, or (OAUTHBEARER) asks for channel binding, which RFC 7628 does not define.
    public static func parse(_ bytes: [UInt8], mechanism: SASLMechanism) -> OAuthBearerMessage? {
        guard let text = String(validating: bytes, as: UTF8.self) else { return nil }
        var pairsText = Substring(text)
        var user: String?
        if mechanism == .oauthBearer {
            guard let (header, rest) = GS2Header.parse(pairsText) else { return nil }
            guard header.bindingName == nil else { return nil }
            user = header.authorizationID
            guard rest.first == "\u{01}" else { return nil }
            pairsText = rest.dropFirst()
        } else if mechanism != .xoauth2 {
            return nil
        }
        // The message ends with two separators: the last pair's and the terminator.
        guard pairsText.hasSuffix("\u{01}\u{01}") || (mechanism == .oauthBearer && pairsText == "\u{01}") else { return nil }
        var token: String?
        for pair in pairsText.dropLast(2).split(separator: "\u{01}", omittingEmptySubsequences: false) {
            guard let equals = pair.firstIndex(of: "=") else { return nil }
            let key = pair[..<equals], value = pair[pair.index(after: equals)...]
            guard !key.isEmpty, key.allSatisfy({ $0.isASCII && $0.isLetter }) else { return nil }
            switch key {
            case "auth":
                // RFC 6750 §2.1: the scheme is case-insensitive; b64token characters only.
                guard value.lowercased().hasPrefix("bearer ") else { return nil }
                let candidate = value.dropFirst(7)
                guard !candidate.isEmpty, candidate.allSatisfy(Self.isTokenCharacter) else { return nil }
                token = String(candidate)
            case "user" where mechanism == .xoauth2:
                user = String(value)
            default:
                continue  // host=, port=, and extensions are informational
            }
        }
        guard let token else { return nil }
        return OAuthBearerMessage(user: user, token: token)
    }

    /// RFC 6750 b64token: `ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/"` then `*"="`.
    static func isTokenCharacter(_ character: Character) -> Bool {
        guard character.isASCII else { return false }
        return character.isLetter || character.isNumber || "-._~+/=".contains(character)
    }

    /// The server's error challenge (RFC 7628 §3.2.2): JSON with `status`; XOAUTH2 servers send the same shape.
    public static func errorChallenge(mechanism: SASLMechanism) -> [UInt8] {
        let status = mechanism == .xoauth2 ? "401" : "invalid_token"
        return Array(#"{"status":"\#(status)","schemes":"bearer"}"#.utf8)
    }

    /// What the client sends in answer to an error challenge: 0x01 for OAUTHBEARER (RFC 7628 §3.2.3), an empty
    /// response for XOAUTH2.
    public static func errorAcknowledgement(mechanism: SASLMechanism) -> [UInt8] {
        mechanism == .oauthBearer ? [Self.separator] : []
    }

    public var description: String { "OAuthBearerMessage(user: \(self.user ?? "-"), token: <redacted>)" }
}

/// URLs of OAuth 2.0 endpoints (token, device, JWKS, introspection): https, or http on loopback only (a local
/// authorization server, tests).
public enum OAuth2URL {
    /// Why `url` cannot be used, or nil.
    public static func problem(_ url: String) -> String? {
        guard let schemeEnd = url.range(of: "://") else { return "not a URL" }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        var rest = url[schemeEnd.upperBound...]
        if let end = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) { rest = rest[..<end] }
        if let at = rest.lastIndex(of: "@") { rest = rest[rest.index(after: at)...] }
        let host: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return "not a URL" }
            host = rest[rest.index(after: rest.startIndex)..<close]
        } else {
            host = rest.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        }
        guard !host.isEmpty else { return "not a URL" }
        if scheme == "https" { return nil }
        let octets = host.split(separator: ".", omittingEmptySubsequences: false)
        let ipv4Loopback = octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil }
        let loopback = host == "localhost" || ipv4Loopback || host == "::1"
        if scheme == "http" && loopback { return nil }
        return "must be an https:// URL (http:// only on loopback)"
    }

    /// `application/x-www-form-urlencoded` (RFC 6749 §B): unreserved characters as they are, everything else
    /// percent-encoded (a space too), so tokens and secrets with `+`, `&` or `=` arrive intact.
    public static func formEscape(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            let unreserved = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "~")
            if unreserved {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded
            }
        }
        return out
    }

    public static func formEncode(_ form: [(String, String)]) -> String {
        form.map { "\(Self.formEscape($0))=\(Self.formEscape($1))" }.joined(separator: "&")
    }
}

extension String {
    fileprivate var leftPadded: String { self.count == 1 ? "0" + self : self }
}
