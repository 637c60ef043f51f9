import NIOCore

/// A single-line status response: `+OK text` or `-ERR [CODE] text`.
public struct StatusResponse: Sendable, Equatable {
    public var isOK: Bool
    public var code: ResponseCode?
    public var text: String

    public static func ok(_ text: String) -> Self { Self(isOK: true, code: nil, text: text) }
    public static func err(_ text: String, code: ResponseCode? = nil) -> Self { Self(isOK: false, code: code, text: text) }

    /// Writes the line with its CRLF. Texts are produced by the server, never copied from client input.
    public func write(into buffer: inout ByteBuffer) {
        buffer.writeStaticString(self.isOK ? "+OK" : "-ERR")
        if let code = self.code {
            buffer.writeStaticString(" [")
            buffer.writeString(code.rawValue)
            buffer.writeStaticString("]")
        }
        if !self.text.isEmpty {
            buffer.writeStaticString(" ")
            buffer.writeString(self.text)
        }
        buffer.writeStaticString("\r\n")
    }
}
