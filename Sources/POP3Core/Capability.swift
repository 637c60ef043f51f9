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
    /// RFC 2449 §6.5: the least time between two logins of the same user, in seconds.
    case loginDelay(Int)
    /// RFC 2449 §6.7: days a retrieved message stays (nil: NEVER); `perUser` adds `USER` (before login, when
    /// accounts differ).
    case expire(days: Int?, perUser: Bool)
    /// RFC 6856 §2; `USER`: UTF-8 user names and passwords are accepted with USER/PASS too.
    case utf8
    /// RFC 6856 §3.
    case lang

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
        case .loginDelay(let seconds): "LOGIN-DELAY \(seconds)"
        case .expire(let days, let perUser): "EXPIRE \(days.map(String.init) ?? "NEVER")\(perUser ? " USER" : "")"
        case .utf8: "UTF8 USER"
        case .lang: "LANG"
        }
    }
}
