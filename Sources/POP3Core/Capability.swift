import NIOCore

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
