import NIOCore

/// A server status line: `+OK`, `-ERR` or a SASL continuation `+`.
/// - SeeAlso: [RFC 1939 §3](https://www.rfc-editor.org/rfc/rfc1939#section-3), [RFC 2449 §8](https://www.rfc-editor.org/rfc/rfc2449#section-8)
public struct ServerStatusLine: Sendable, Equatable {
    public enum Kind: Sendable, Equatable { case ok, err, continuation }
    public var kind: Kind
    /// The extended response code between brackets (RFC 2449 §8, RFC 3206), when it is one this product knows;
    /// an unknown code stays in `text`, brackets and all, so nothing the server said is lost.
    public var code: ResponseCode?
    /// The rest of the line, sanitised: control characters and non-ASCII bytes are replaced, so it is safe to print.
    public var text: String

    public init(kind: Kind, code: ResponseCode?, text: String) {
        self.kind = kind
        self.code = code
        self.text = text
    }

    public enum ParseError: Error, Sendable, Equatable {
        case lineTooLong(maximum: Int)
        case notAStatusLine
    }

    /// Parses one line (without CRLF).
    public static func parse(_ line: some Collection<UInt8>, maximumLength: Int = POP3Defaults.maximumResponseLineLength) throws(ParseError) -> Self {
        guard line.count + 2 <= maximumLength else { throw .lineTooLong(maximum: maximumLength) }
        let bytes = Array(line)
        let kind: Kind
        var rest: ArraySlice<UInt8>
        if bytes.starts(with: Array("+OK".utf8)) {
            kind = .ok
            rest = bytes[3...]
        } else if bytes.starts(with: Array("-ERR".utf8)) {
            kind = .err
            rest = bytes[4...]
        } else if bytes.first == UInt8(ascii: "+") && (bytes.count == 1 || bytes[1] == UInt8(ascii: " ")) {
            kind = .continuation
            rest = bytes[1...]
        } else {
            throw .notAStatusLine
        }
        if let first = rest.first {
            // "+OKAY" is not "+OK".
            guard first == UInt8(ascii: " ") else { throw .notAStatusLine }
            rest = rest.dropFirst()
        }
        var code: ResponseCode?
        if kind != .continuation, rest.first == UInt8(ascii: "["), let close = rest.firstIndex(of: UInt8(ascii: "]")) {
            let inner = rest[rest.index(after: rest.startIndex)..<close]
            if !inner.isEmpty, inner.count <= 64, inner.allSatisfy({ $0 > 0x20 && $0 < 0x7F }),
                let known = ResponseCode(rawValue: String(decoding: inner, as: UTF8.self).uppercased())
            {
                code = known
                rest = rest[rest.index(after: close)...]
                if rest.first == UInt8(ascii: " ") { rest = rest.dropFirst() }
            }
        }
        return Self(kind: kind, code: code, text: sanitize(rest))
    }
}
