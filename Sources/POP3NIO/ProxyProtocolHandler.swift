import NIOCore
import POP3Core

/// Reads a PROXY v2 header from a trusted proxy, records the real client address, then steps aside and passes
/// the rest of the bytes on (to TLS or the line decoder). Anything else from a trusted proxy closes the
/// connection. Only installed for peers in the configured proxy networks: others cannot claim an address.
public final class ProxyProtocolHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer

    private var buffered = ByteBuffer()
    private let onHeader: @Sendable (ProxyHeaderV2) -> Void
    private var done = false

    public init(onHeader: @escaping @Sendable (ProxyHeaderV2) -> Void) {
        self.onHeader = onHeader
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.done else {
            context.fireChannelRead(data)
            return
        }
        var incoming = Self.unwrapInboundIn(data)
        self.buffered.writeBuffer(&incoming)
        do {
            guard let header = try ProxyHeaderV2.parse(&self.buffered) else { return }
            self.done = true
            self.onHeader(header)
            if self.buffered.readableBytes > 0 {
                context.fireChannelRead(Self.wrapInboundOut(self.buffered))
            }
            self.buffered = ByteBuffer()
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            self.done = true
            self.buffered = ByteBuffer()
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }
}
