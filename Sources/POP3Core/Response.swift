import NIOCore

/// Extended response codes.
/// - SeeAlso: [RFC 2449 §8](https://www.rfc-editor.org/rfc/rfc2449#section-8), [RFC 3206](https://www.rfc-editor.org/rfc/rfc3206)
public enum ResponseCode: String, Sendable, Equatable, CaseIterable {
    case inUse = "IN-USE"
    case loginDelay = "LOGIN-DELAY"
    case sysTemp = "SYS/TEMP"
    case sysPerm = "SYS/PERM"
    case auth = "AUTH"
    case utf8 = "UTF8"
}

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

/// Server capabilities announced by CAPA.
/// - SeeAlso: [RFC 2449 §6](https://www.rfc-editor.org/rfc/rfc2449#section-6)
public enum Capability: Sendable, Equatable, CustomStringConvertible {
    case top
    case user
    case sasl([String])
    case respCodes
    case authRespCode
    case pipelining
    case uidl
    case stls
    case implementation(String)

    public var description: String {
        switch self {
        case .top: "TOP"
        case .user: "USER"
        case .sasl(let mechanisms): (["SASL"] + mechanisms).joined(separator: " ")
        case .respCodes: "RESP-CODES"
        case .authRespCode: "AUTH-RESP-CODE"
        case .pipelining: "PIPELINING"
        case .uidl: "UIDL"
        case .stls: "STLS"
        case .implementation(let name): "IMPLEMENTATION \(name)"
        }
    }
}
