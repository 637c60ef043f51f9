import NIOCore

/// What a session writes.
public enum POP3OutboundFrame: Sendable {
    case bytes(ByteBuffer)
    /// The reply to STLS. It goes out in plaintext; then the line decoder is replaced and TLS handlers are
    /// inserted in the same event-loop tick, so no byte read afterwards reaches the plaintext decoder.
    case startTLS(ByteBuffer)
}

/// Writes session output and performs the STLS switch (RFC 2595 §4).
///
/// Because the STLS reply travels through the same ordered outbound stream as every earlier reply, all earlier
/// replies have left in plaintext before the switch, and none after it can.
public final class OutboundFrameHandler: ChannelOutboundHandler, RemovableChannelHandler {
    public typealias OutboundIn = POP3OutboundFrame
    public typealias OutboundOut = ByteBuffer

    /// Makes the TLS handlers to put in front of the line decoder (ClientHello guard, TLS, handshake deadline).
    public typealias TLSHandlerFactory = @Sendable (Channel) throws -> [ChannelHandler]

    private let maximumLineLength: Int
    private let makeTLSHandlers: TLSHandlerFactory?

    public init(maximumLineLength: Int, makeTLSHandlers: TLSHandlerFactory?) {
        self.maximumLineLength = maximumLineLength
        self.makeTLSHandlers = makeTLSHandlers
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch Self.unwrapOutboundIn(data) {
        case .bytes(let buffer):
            context.write(Self.wrapOutboundOut(buffer), promise: promise)
        case .startTLS(let reply):
            context.writeAndFlush(Self.wrapOutboundOut(reply), promise: nil)
            do {
                try self.switchToTLS(context: context)
                promise?.succeed()
            } catch {
                promise?.fail(error)
                context.close(promise: nil)
            }
        }
    }

    private func switchToTLS(context: ChannelHandlerContext) throws {
        guard let makeTLSHandlers else { throw ChannelError.operationUnsupported }
        let pipeline = context.pipeline.syncOperations
        let oldDecoder = try pipeline.handler(type: ByteToMessageHandler<LineFrameDecoder>.self)
        // Removal runs decodeLast, which drops every buffered plaintext byte. TLS goes first in the pipeline at
        // once, so from the next read on the client's bytes pass through it.
        pipeline.removeHandler(oldDecoder, promise: nil)
        let newDecoder = ByteToMessageHandler(LineFrameDecoder(maximumLineLength: self.maximumLineLength))
        try pipeline.addHandler(newDecoder, position: .before(self))
        try pipeline.addHandlers(try makeTLSHandlers(context.channel), position: .first)
        let decoderContext = try pipeline.context(handler: newDecoder)
        decoderContext.fireChannelRead(NIOAny(POP3InboundFrame.tlsStarted))
        decoderContext.fireChannelReadComplete()
    }
}
