import NIOCore
import NIOPosix
import POP3Core

/// How a client secures its connection.
public enum ConnectionSecurity: Sendable, Equatable {
    /// TLS from the first byte (RFC 8314), port 995. The default.
    case implicitTLS
    /// Plaintext, then STLS (RFC 2595), which is required: if the server does not offer or refuses it, the client
    /// stops before sending any credential.
    case startTLS
    /// No TLS at all. Only with an explicit option; never a fallback.
    case insecurePlaintext
}

/// What the client trusts.
public enum TrustPolicy: Sendable, Equatable {
    /// The system trust store, with host-name verification.
    case system
    /// Certificates from a PEM file as roots, with host-name verification.
    case caFile(String)
    /// A SHA-256 pin of the leaf certificate (DER) or of its public key (SPKI), hex; nothing else is checked.
    case sha256Pin([UInt8])

    /// Parses `sha256:HEX` (64 hex digits; colons allowed between bytes).
    public static func pin(parsing text: String) -> TrustPolicy? {
        guard text.lowercased().hasPrefix("sha256:") else { return nil }
        let hex = text.dropFirst(7).filter { $0 != ":" }
        guard hex.count == 64 else { return nil }
        var bytes: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            guard let byte = UInt8(hex[index..<next], radix: 16) else { return nil }
            bytes.append(byte)
            index = next
        }
        return .sha256Pin(bytes)
    }
}

/// How the client logs in (`pop3 fetch --auth`, accounts file `auth:`).
public enum AuthenticationMethod: String, Sendable, CaseIterable, CustomStringConvertible, Codable {
    /// The strongest mechanism the server offers: SCRAM-SHA-256-PLUS, SCRAM-SHA-256, PLAIN, then USER/PASS.
    case auto
    case scramSHA256Plus = "scram-sha-256-plus"
    case scramSHA256 = "scram-sha-256"
    case plain
    case user
    /// OAuth 2.0 (RFC 7628) with an access token instead of a password.
    case oauthBearer = "oauthbearer"
    /// Google's and Microsoft's OAuth 2.0 mechanism.
    case xoauth2

    public var description: String { self.rawValue }

    /// `--auth`/`auth:` names (`scram-sha-256`), SASL names in any case (`SCRAM-SHA-256`, as in a URL's `;AUTH=`),
    /// `*` for auto (RFC 2384).
    public init?(parsing text: String) {
        let lowered = text.lowercased()
        if lowered == "*" {
            self = .auto
            return
        }
        guard let method = AuthenticationMethod(rawValue: lowered) else { return nil }
        self = method
    }

    /// OAuth: log in with an access token (`login(user:bearerToken:)`), not a password.
    public var usesBearerToken: Bool { self == .oauthBearer || self == .xoauth2 }

    /// Mechanisms `auto` tries, strongest first.
    static let automaticOrder: [AuthenticationMethod] = [.scramSHA256Plus, .scramSHA256, .plain, .user]

    /// The SASL name, nil for USER/PASS and auto.
    var saslName: String? {
        switch self {
        case .auto, .user: nil
        case .scramSHA256Plus: "SCRAM-SHA-256-PLUS"
        case .scramSHA256: "SCRAM-SHA-256"
        case .plain: "PLAIN"
        case .oauthBearer: "OAUTHBEARER"
        case .xoauth2: "XOAUTH2"
        }
    }
}

public struct POP3ClientConfiguration: Sendable {
    public var host: String
    public var port: Int
    public var security: ConnectionSecurity
    public var trust: TrustPolicy
    public var connectTimeout: TimeAmount = .seconds(30)
    /// For the TLS handshake and for every reply line; a server that goes silent longer fails the connection.
    public var replyTimeout: TimeAmount = .seconds(60)
    /// Commands in flight at once when the server announces PIPELINING.
    public var pipelineWindow = 16
    public var maximumResponseLineLength = POP3Defaults.maximumResponseLineLength
    /// Lines accepted in a LIST or UIDL listing, and in a CAPA reply: an endless listing fails the connection.
    public var maximumListingLines = POP3Defaults.maximumListingLines
    public var maximumCapabilityLines = POP3Defaults.maximumCapabilityLines
    /// Local address to bind to (tests play several client hosts on loopback).
    public var localAddress: String?
    public var authentication = AuthenticationMethod.auto
    /// Where the connection's channel lives; an `EventLoop` pins it to one thread (see `EventLoopTaskExecutor`).
    public var eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton

    public init(host: String, port: Int? = nil, security: ConnectionSecurity = .implicitTLS, trust: TrustPolicy = .system) {
        self.host = host
        self.port = port ?? (security == .implicitTLS ? 995 : 110)
        self.security = security
        self.trust = trust
    }
}

/// Errors a POP3 client reports. Server-controlled text in them is sanitised.
public enum POP3ClientError: Error, Sendable, Equatable, CustomStringConvertible {
    case connectionFailed(String)
    case tlsFailed(String)
    case stlsNotOffered
    case stlsRefused(String)
    case stlsResponseInjection
    case alpnMismatch(String)
    case timeout
    case connectionClosed
    /// The server's reply was not a POP3 status line, was too long, or did not fit the command.
    case protocolViolation(String)
    case authenticationFailed(code: ResponseCode?, text: String)
    case commandFailed(command: String, code: ResponseCode?, text: String)
    case noUsableMechanism
    /// The mechanism asked for is not among those the server offers (there is no fallback to a weaker one).
    case mechanismNotOffered(String)
    /// The server failed SCRAM's checks of it (its signature, nonce or parameters): it may not be the real server.
    case serverAuthenticationFailed(String)

    public var description: String {
        switch self {
        case .connectionFailed(let why): "cannot connect: \(why)"
        case .tlsFailed(let why): "TLS failed: \(why)"
        case .stlsNotOffered: "server does not offer STLS; refusing to continue without TLS"
        case .stlsRefused(let text): "server refused STLS (\(text)); refusing to continue without TLS"
        case .stlsResponseInjection: "server sent data after its STLS reply before TLS (response injection); aborted"
        case .alpnMismatch(let proto): "server selected ALPN protocol \"\(proto)\", not pop3; aborted"
        case .timeout: "server did not answer in time"
        case .connectionClosed: "connection closed by the server"
        case .protocolViolation(let what): "protocol violation: \(what)"
        case .authenticationFailed(let code, let text):
            switch code {
            // RFC 2449 §8.1.1 / RFC 3206: not a credentials problem; say so, so nobody changes a good password.
            case .inUse: "login refused [IN-USE]: the mailbox is in use by another session; try again later (\(text))"
            case .sysTemp: "login refused [SYS/TEMP]: temporary server problem; try again later (\(text))"
            default: "login failed\(code.map { " [\($0.rawValue)]" } ?? ""): \(text)"
            }
        case .commandFailed(let command, let code, let text): "\(command) failed\(code.map { " [\($0.rawValue)]" } ?? ""): \(text)"
        case .noUsableMechanism: "server offers no usable login mechanism (SCRAM-SHA-256(-PLUS), PLAIN or USER)"
        case .mechanismNotOffered(let name): "server does not offer \(name) (asked for explicitly; no fallback to another mechanism)"
        case .serverAuthenticationFailed(let why): "server failed authentication, login aborted: \(why)"
        }
    }
}
