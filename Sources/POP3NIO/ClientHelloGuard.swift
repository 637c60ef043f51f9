import NIOCore
import NIOTLS

/// What a ClientHello says about the server the client wants.
public struct ClientHelloSummary: Sendable, Equatable {
    /// The SNI host name, if the client sent one.
    public var serverName: String?
    /// The ALPN protocol list, if the client sent the extension.
    public var applicationProtocols: [String]?
}

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
    private var buffered: ByteBuffer?
    private var decided = false

    public init(acceptsServerName: @escaping @Sendable (String) -> Bool) {
        self.acceptsServerName = acceptsServerName
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
        switch Self.parse(self.buffered!) {
        case .needMoreData:
            if self.buffered!.readableBytes > Self.maximumClientHelloBytes { self.passOn(context: context) }
        case .notAClientHello:
            self.passOn(context: context)
        case .clientHello(let hello):
            if let alert = self.check(hello) {
                self.decided = true
                self.buffered = nil
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

    public enum ParseResult: Equatable { case needMoreData, notAClientHello, clientHello(ClientHelloSummary) }

    /// Parses a ClientHello from the start of a TLS byte stream (possibly spread over several handshake records).
    /// - SeeAlso: [RFC 8446 §4.1.2](https://www.rfc-editor.org/rfc/rfc8446#section-4.1.2)
    public static func parse(_ stream: ByteBuffer) -> ParseResult {
        var records = stream
        var handshake = ByteBuffer()
        // Reassemble handshake-record payloads until the ClientHello message is complete.
        while true {
            guard let header = records.readBytes(length: 5) else { return .needMoreData }
            guard header[0] == 22, header[1] == 3 else { return .notAClientHello }
            let length = Int(header[3]) << 8 | Int(header[4])
            guard length > 0, length <= 16_384 + 2048 else { return .notAClientHello }
            guard var payload = records.readSlice(length: length) else { return .needMoreData }
            handshake.writeBuffer(&payload)
            guard handshake.readableBytes >= 4 else { continue }
            let bytes = handshake.readableBytesView
            guard bytes[bytes.startIndex] == 1 else { return .notAClientHello }
            let messageLength = Int(bytes[bytes.startIndex + 1]) << 16 | Int(bytes[bytes.startIndex + 2]) << 8 | Int(bytes[bytes.startIndex + 3])
            guard messageLength <= maximumClientHelloBytes else { return .notAClientHello }
            if handshake.readableBytes >= 4 + messageLength {
                handshake.moveReaderIndex(forwardBy: 4)
                guard var body = handshake.readSlice(length: messageLength), let summary = Self.parseBody(&body) else {
                    return .notAClientHello
                }
                return .clientHello(summary)
            }
        }
    }

    private static func parseBody(_ body: inout ByteBuffer) -> ClientHelloSummary? {
        // legacy_version(2) random(32) session_id<0..32> cipher_suites<2..2^16-2> compression_methods<1..2^8-1>
        guard body.readSlice(length: 34) != nil,
            let sessionIDLength = body.readInteger(as: UInt8.self), body.readSlice(length: Int(sessionIDLength)) != nil,
            let suitesLength = body.readInteger(as: UInt16.self), body.readSlice(length: Int(suitesLength)) != nil,
            let compressionLength = body.readInteger(as: UInt8.self), body.readSlice(length: Int(compressionLength)) != nil
        else { return nil }
        var summary = ClientHelloSummary()
        guard body.readableBytes > 0 else { return summary }  // no extensions at all
        guard let extensionsLength = body.readInteger(as: UInt16.self), var extensions = body.readSlice(length: Int(extensionsLength))
        else { return nil }
        while extensions.readableBytes > 0 {
            guard let type = extensions.readInteger(as: UInt16.self), let length = extensions.readInteger(as: UInt16.self),
                var data = extensions.readSlice(length: Int(length))
            else { return nil }
            switch type {
            case 0:  // server_name (RFC 6066 §3)
                guard let listLength = data.readInteger(as: UInt16.self), var list = data.readSlice(length: Int(listLength)) else { return nil }
                while list.readableBytes > 0 {
                    guard let nameType = list.readInteger(as: UInt8.self), let nameLength = list.readInteger(as: UInt16.self),
                        let name = list.readBytes(length: Int(nameLength))
                    else { return nil }
                    if nameType == 0 {
                        guard let text = String(validating: name, as: UTF8.self) else { return nil }
                        summary.serverName = text
                    }
                }
            case 16:  // application_layer_protocol_negotiation (RFC 7301 §3.1)
                guard let listLength = data.readInteger(as: UInt16.self), var list = data.readSlice(length: Int(listLength)) else { return nil }
                var protocols: [String] = []
                while list.readableBytes > 0 {
                    guard let nameLength = list.readInteger(as: UInt8.self), let name = list.readBytes(length: Int(nameLength)) else { return nil }
                    protocols.append(String(decoding: name, as: UTF8.self))
                }
                summary.applicationProtocols = protocols
            default:
                break
            }
        }
        return summary
    }
}

/// The TLS handshake did not finish before its deadline.
public struct HandshakeTimeoutError: Error, Sendable, CustomStringConvertible {
    public var description: String { "TLS handshake timed out" }
}

/// Closes the connection if the TLS handshake has not completed in time (security.md cases 23 and 106).
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
