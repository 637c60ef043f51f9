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
