/// The SASL mechanisms pop3d and pop3 speak, by their IANA names (RFC 4422 §3.1, case-insensitive on the wire).
public enum SASLMechanism: String, Sendable, CaseIterable, CustomStringConvertible {
    case plain = "PLAIN"
    case scramSHA256Plus = "SCRAM-SHA-256-PLUS"
    case scramSHA256 = "SCRAM-SHA-256"
    case scramSHA1Plus = "SCRAM-SHA-1-PLUS"
    case scramSHA1 = "SCRAM-SHA-1"
    case oauthBearer = "OAUTHBEARER"
    case xoauth2 = "XOAUTH2"

    /// Looks a name up case-insensitively.
    public init?(name: some StringProtocol) {
        self.init(rawValue: name.uppercased())
    }

    public var description: String { self.rawValue }

    /// The SCRAM hash of a SCRAM mechanism.
    public var scramAlgorithm: SCRAMAlgorithm? {
        switch self {
        case .scramSHA256, .scramSHA256Plus: .sha256
        case .scramSHA1, .scramSHA1Plus: .sha1
        case .plain, .oauthBearer, .xoauth2: nil
        }
    }

    /// A `-PLUS` mechanism: SCRAM with channel binding (RFC 5802 §4).
    public var usesChannelBinding: Bool { self == .scramSHA256Plus || self == .scramSHA1Plus }

    /// The `-PLUS` variant of a SCRAM mechanism, or the mechanism itself.
    public var plusVariant: SASLMechanism {
        switch self {
        case .scramSHA256: .scramSHA256Plus
        case .scramSHA1: .scramSHA1Plus
        default: self
        }
    }
}
