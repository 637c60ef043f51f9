import NIOCore

/// Reads the body of a multi-line response from the wire: removes byte-stuffing and finds the terminator.
///
/// The body ends only at CRLF "." CRLF; a connection that ends before it is an error for the caller, never a
/// short message. Lines keep their CRLF. Bytes after the terminator are left in the input (pipelining).
/// Chunks may split anywhere.
/// - SeeAlso: [RFC 1939 §3](https://www.rfc-editor.org/rfc/rfc1939#section-3)
public struct DotUnstuffer: Sendable {
    private enum LineState: Sendable {
        /// At the start of a line.
        case lineStart
        /// Saw "." at the start of a line.
        case dot
        /// Saw "." CR at the start of a line.
        case dotCR
        /// Inside a line; `lastWasCR` tells whether the previous byte was CR.
        case inLine(lastWasCR: Bool)
    }

    private var state: LineState = .lineStart
    public private(set) var isComplete = false

    public init() {}

    /// Consumes bytes from `input`, appending message bytes to `out`. Returns true once the terminator has been
    /// consumed; the rest of `input` is then untouched.
    public mutating func decode(_ input: inout ByteBuffer, into out: inout ByteBuffer) -> Bool {
        guard !self.isComplete else { return true }
        while input.readableBytes > 0 {
            switch self.state {
            case .lineStart:
                let byte = input.readableBytesView.first!
                if byte == UInt8(ascii: ".") {
                    input.moveReaderIndex(forwardBy: 1)
                    self.state = .dot
                } else {
                    self.state = .inLine(lastWasCR: false)
                }
            case .dot:
                let byte = input.readableBytesView.first!
                if byte == UInt8(ascii: "\r") {
                    input.moveReaderIndex(forwardBy: 1)
                    self.state = .dotCR
                } else {
                    // A stuffed line: the leading dot is dropped, the rest is content.
                    self.state = .inLine(lastWasCR: false)
                }
            case .dotCR:
                let byte = input.readableBytesView.first!
                if byte == UInt8(ascii: "\n") {
                    input.moveReaderIndex(forwardBy: 1)
                    self.isComplete = true
                    return true
                }
                // ".\r" then something else: content "\r…" after the dropped dot.
                out.writeInteger(UInt8(ascii: "\r"))
                self.state = .inLine(lastWasCR: true)
            case .inLine(let lastWasCR):
                // Copy up to and including the next LF.
                let view = input.readableBytesView
                guard let lf = view.firstIndex(of: UInt8(ascii: "\n")) else {
                    let count = view.count
                    let endsWithCR = view.last == UInt8(ascii: "\r")
                    var slice = input.readSlice(length: count)!
                    out.writeBuffer(&slice)
                    self.state = .inLine(lastWasCR: endsWithCR)
                    return false
                }
                let length = lf - view.startIndex + 1
                let crBefore = length >= 2 ? view[lf - 1] == UInt8(ascii: "\r") : lastWasCR
                var slice = input.readSlice(length: length)!
                out.writeBuffer(&slice)
                // Only CRLF ends a line; a bare LF is content.
                self.state = crBefore ? .lineStart : .inLine(lastWasCR: false)
            }
        }
        return false
    }
}


/// Makes server-controlled bytes safe to print or log: printable ASCII stays, everything else becomes `?`.
public func sanitize(_ bytes: some Collection<UInt8>) -> String {
    String(decoding: bytes.map { $0 >= 0x20 && $0 < 0x7F ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
}

/// Escapes client- or server-controlled text for a log line: control characters (C0, DEL, C1) become `\u{XX}`,
/// so a value can never start a new line or drive a terminal; printable Unicode stays readable.
public func logEscaped(_ text: some StringProtocol, maximumLength: Int = 256) -> String {
    var out = ""
    for scalar in text.unicodeScalars.prefix(maximumLength) {
        if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar == "\\" {
            out += scalar == "\\" ? "\\\\" : "\\u{\(String(scalar.value, radix: 16))}"
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
    return text.unicodeScalars.count > maximumLength ? out + "…" : out
}
