import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import NIOTLS

/// TLS cipher suites by their IANA code, named as OpenSSL does (the ones the product's policy allows).
public enum TLSCipherSuite {
    static let names: [UInt16: String] = [
        0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384", 0x1303: "TLS_CHACHA20_POLY1305_SHA256",
        0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256", 0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
        0xC02F: "ECDHE-RSA-AES128-GCM-SHA256", 0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
        0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305", 0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305",
    ]

    /// The suite's name, or its code in hex (`0x1304`).
    public static func name(_ code: UInt16) -> String {
        if let name = Self.names[code] { return name }
        let hex = String(code, radix: 16, uppercase: true)
        return "0x" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
    }
}

/// Why a server's TLS handshake failed: a bounded set, for metrics and the session's summary line.
public enum TLSHandshakeFailure: String, Sendable, CaseIterable {
    /// The TLS library refused the handshake (versions, suites, a malformed record).
    case `protocol`
    /// The ClientHello offered ALPN without `pop3`.
    case alpn
    /// The ClientHello named a server the certificate does not cover.
    case sni
    /// No handshake before the deadline.
    case timeout
    case other
}

/// What the server learns of one connection's TLS: the version and cipher suite once the handshake completed, or
/// why it failed (reported once, through `onFailure`). Shared by the handlers of one connection and its session.
public final class ServerTLSObservation: Sendable {
    public struct Established: Sendable, Equatable {
        /// `TLSv1.2`, `TLSv1.3`.
        public var version: String
        /// OpenSSL's name of the suite (`TLS_AES_128_GCM_SHA256`).
        public var cipher: String
    }

    private struct State {
        var cipherSuite: UInt16?
        var clientSentBytes = false
        var established: Established?
        var failure: TLSHandshakeFailure?
    }

    private let state = NIOLockedValueBox(State())
    private let onFailure: @Sendable (TLSHandshakeFailure) -> Void

    public init(onFailure: @escaping @Sendable (TLSHandshakeFailure) -> Void = { _ in }) {
        self.onFailure = onFailure
    }

    public var established: Established? { self.state.withLockedValue { $0.established } }
    public var failure: TLSHandshakeFailure? { self.state.withLockedValue { $0.failure } }

    func sawCipherSuite(_ suite: UInt16) { self.state.withLockedValue { $0.cipherSuite = suite } }

    func sawClientBytes() { self.state.withLockedValue { $0.clientSentBytes = true } }

    func completed(version: TLSVersion?) {
        self.state.withLockedValue { state in
            state.established = Established(
                version: version.map(Self.name) ?? "unknown",
                cipher: state.cipherSuite.map(TLSCipherSuite.name) ?? "unknown"
            )
        }
    }

    /// The first failure of a handshake that has not completed; later ones (the close that follows) are ignored. A
    /// connection closed before the client sent a byte (a port probe, a load balancer's check) is not a failed
    /// handshake; one that sends nothing until the deadline is (`timeout`).
    public func failed(_ reason: TLSHandshakeFailure) {
        let first = self.state.withLockedValue { state -> Bool in
            guard state.established == nil, state.failure == nil else { return false }
            guard state.clientSentBytes || reason == .timeout else { return false }
            state.failure = reason
            return true
        }
        if first { self.onFailure(reason) }
    }

    static func name(_ version: TLSVersion) -> String {
        switch version {
        case .tlsv1: "TLSv1"
        case .tlsv11: "TLSv1.1"
        case .tlsv12: "TLSv1.2"
        case .tlsv13: "TLSv1.3"
        }
    }

    /// The handlers that observe a server handshake: the first goes first, before any ClientHello check (it sees
    /// whether the client sent anything, and reads the cipher suite out of the ServerHello the server writes), the
    /// second after `NIOSSLServerHandler` and the handshake deadline (it sees the completion or the error).
    public func makeHandlers() -> (beforeTLS: any ChannelHandler, afterTLS: any ChannelHandler) {
        (ServerHelloWriteSniffer(observation: self), ServerHandshakeReporter(observation: self))
    }
}

/// Notes the client's first bytes, and reads the cipher suite out of the ServerHello on its way out. It stays in the
/// pipeline (removing itself in the middle of the TLS handler's first flight stalled the handshake) but looks at
/// nothing after the first 512 bytes each way.
final class ServerHelloWriteSniffer: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var clientSent = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if !self.clientSent {
            self.clientSent = true
            self.observation.sawClientBytes()
        }
        context.fireChannelRead(data)
    }

    private let observation: ServerTLSObservation
    private var seen: ByteBuffer? = ByteBuffer()

    init(observation: ServerTLSObservation) { self.observation = observation }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if self.seen != nil {
            var bytes = Self.unwrapOutboundIn(data)
            self.seen!.writeBuffer(&bytes)
            if let suite = ServerHelloSniffer.cipherSuite(fromServerHello: self.seen!) {
                self.observation.sawCipherSuite(suite)
                self.seen = nil
            } else if self.seen!.readableBytes >= 512 {
                self.seen = nil
            }
        }
        context.write(data, promise: promise)
    }
}

/// Sees the handshake complete (and reads the version from the TLS handler) or fail (and says why).
final class ServerHandshakeReporter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let observation: ServerTLSObservation

    init(observation: ServerTLSObservation) { self.observation = observation }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        context.fireUserInboundEventTriggered(event)
        if case .handshakeCompleted = event as? TLSUserEvent {
            let version = try? context.pipeline.syncOperations.handler(type: NIOSSLHandler.self).tlsVersion
            self.observation.completed(version: version)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch error {
        case is HandshakeTimeoutError: self.observation.failed(.timeout)
        case is NIOSSLError, is BoringSSLError: self.observation.failed(.protocol)
        default: self.observation.failed(.other)
        }
        context.fireErrorCaught(error)
    }
}
