import NIOCore
import NIOTLS
import POP3Core

/// Enforces strict ALPN and SNI before the TLS handler sees the handshake (ALPACA countermeasures).
///
/// swift-nio-ssl answers an ALPN mismatch with "no ack" and cannot pick alert 112, so this handler reads the
/// ClientHello itself, like NIOTLS's `SNIHandler`, and writes the fatal alert:
/// - an ALPN list without `pop3` → `no_application_protocol` (120);
/// - an SNI name we hold no certificate for → `unrecognized_name` (112);
/// - no ALPN or no SNI → accepted.
/// Then it removes itself and passes the buffered bytes on. Input that is not a TLS handshake is passed on
/// unchanged for the TLS handler to reject.
/// - SeeAlso: [RFC 7301 §3.2](https://www.rfc-editor.org/rfc/rfc7301#section-3.2), [RFC 6066 §3](https://www.rfc-editor.org/rfc/rfc6066#section-3),
///   ALPACA "How to ALPN/SNI".
public final class ClientHelloGuard: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer

    /// The ALPN identifier for POP3 (IANA registry, RFC 2595).
    public static let alpnProtocol = "pop3"
    /// The most ClientHello bytes buffered before giving up (a ClientHello fits in a few records).
    public static let maximumClientHelloBytes = 4 * (16_384 + 5)

    public enum Alert: UInt8, Sendable { case unrecognizedName = 112, noApplicationProtocol = 120 }

    private let acceptsServerName: @Sendable (String) -> Bool
    private let onRefusal: @Sendable (Alert) -> Void
    private var buffered: ByteBuffer?
    private var decided = false

    public init(acceptsServerName: @escaping @Sendable (String) -> Bool, onRefusal: @escaping @Sendable (Alert) -> Void = { _ in }) {
        self.acceptsServerName = acceptsServerName
        self.onRefusal = onRefusal
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.decided else {
            context.fireChannelRead(data)
            return
        }
        var incoming = Self.unwrapInboundIn(data)
        if self.buffered == nil {
            self.buffered = incoming
        } else {
            self.buffered!.writeBuffer(&incoming)
        }
        switch ClientHelloParser.parse(self.buffered!, maximumBytes: Self.maximumClientHelloBytes) {
        case .needMoreData:
            if self.buffered!.readableBytes > Self.maximumClientHelloBytes { self.passOn(context: context) }
        case .notAClientHello:
            self.passOn(context: context)
        case .clientHello(let hello):
            if let alert = self.check(hello) {
                self.decided = true
                self.buffered = nil
                self.onRefusal(alert)
                var record = context.channel.allocator.buffer(capacity: 7)
                // TLS record: alert(21), TLS 1.2 version, length 2, level fatal(2), description.
                record.writeBytes([21, 3, 3, 0, 2, 2, alert.rawValue])
                context.writeAndFlush(NIOAny(record)).whenComplete { _ in context.close(promise: nil) }
            } else {
                self.passOn(context: context)
            }
        }
    }

    public func check(_ hello: ClientHelloSummary) -> Alert? {
        if let protocols = hello.applicationProtocols, !protocols.contains(Self.alpnProtocol) {
            return .noApplicationProtocol
        }
        if let name = hello.serverName, !self.acceptsServerName(name) {
            return .unrecognizedName
        }
        return nil
    }

    private func passOn(context: ChannelHandlerContext) {
        self.decided = true
        if let buffered = self.buffered {
            self.buffered = nil
            context.fireChannelRead(NIOAny(buffered))
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

/// The TLS handshake did not finish before its deadline.
public struct HandshakeTimeoutError: Error, Sendable, CustomStringConvertible {
    public var description: String { "TLS handshake timed out" }
}

/// Closes the connection if the TLS handshake has not completed in time (docs/security-cases.md cases 23 and 106).
public final class HandshakeDeadlineHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = NIOAny

    private let timeout: TimeAmount
    private var scheduled: Scheduled<Void>?

    public init(timeout: TimeAmount) { self.timeout = timeout }

    public func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        self.scheduled = context.eventLoop.scheduleTask(in: self.timeout) {
            loopBound.value.fireErrorCaught(HandshakeTimeoutError())
            loopBound.value.close(promise: nil)
        }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.scheduled?.cancel()
        self.scheduled = nil
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        context.fireUserInboundEventTriggered(event)
        if case .handshakeCompleted = event as? TLSUserEvent {
            self.scheduled?.cancel()
            self.scheduled = nil
            // Only after passing the event on: a removed context forwards nothing.
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }
}
