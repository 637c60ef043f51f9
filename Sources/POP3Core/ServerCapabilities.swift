/// What a client learns from a CAPA reply (RFC 2449 §5): the lines as announced (sanitised, for display) and the
/// facts the client acts on. Capability names are case-insensitive.
/// - SeeAlso: [RFC 2449 §6](https://www.rfc-editor.org/rfc/rfc2449#section-6)
public struct ServerCapabilities: Sendable, Equatable {
    /// The CAPA lines as the server sent them, sanitised. Empty when CAPA failed or was not asked.
    public private(set) var lines: [String]

    public init(lines: [String] = []) {
        self.lines = lines
    }

    /// Builds the set from raw reply lines (each without CRLF and already un-stuffed).
    public init(rawLines: [[UInt8]]) {
        self.lines = rawLines.map { sanitize($0) }
    }

    private func has(_ name: String) -> Bool {
        self.lines.contains { $0.uppercased() == name }
    }

    public var isEmpty: Bool { self.lines.isEmpty }

    /// The SASL mechanisms announced, upper-cased, in the server's order.
    public var saslMechanisms: [String] {
        guard let line = self.lines.first(where: { $0.uppercased().hasPrefix("SASL ") }) else { return [] }
        return line.uppercased().split(separator: " ").dropFirst().map(String.init)
    }

    public var pipelining: Bool { self.has("PIPELINING") }
    public var stls: Bool { self.has("STLS") }

    /// USER/PASS may be tried: CAPA lists USER, or says nothing at all (RFC 1939 servers predate CAPA).
    public var userPass: Bool { self.lines.isEmpty || self.has("USER") }
    /// USER is listed (for display: "USER/PASS" is offered for certain).
    public var announcesUser: Bool { self.has("USER") }
}

/// The lines of a multi-line reply (RFC 1939 §3): the terminator, or a content line with its byte-stuffing removed.
public enum MultiLineReplyLine: Sendable, Equatable {
    case terminator
    case content([UInt8])

    /// Classifies one line received without its CRLF.
    public init(_ line: [UInt8]) {
        if line == [UInt8(ascii: ".")] {
            self = .terminator
        } else if line.first == UInt8(ascii: ".") {
            self = .content(Array(line.dropFirst()))
        } else {
            self = .content(line)
        }
    }
}
