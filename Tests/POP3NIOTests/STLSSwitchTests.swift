import NIOCore
import NIOEmbedded
import Testing

@testable import POP3NIO

/// Stands in for the TLS handler: records what reaches it.
final class RecordingTLSStandIn: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Swallow: a real TLS handler would consume the handshake bytes.
    }
}

@Suite struct STLSSwitchTests {
    func makeChannel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineFrameDecoder(maximumLineLength: 255)))
        try channel.pipeline.syncOperations.addHandler(
            OutboundFrameHandler(maximumLineLength: 255, makeTLSHandlers: { _ in [RecordingTLSStandIn()] })
        )
        return channel
    }

    /// docs/security-cases.md cases 1–3: "STLS\r\nCAPA\r\n" in one segment; nothing injected may reach the session after TLS.
    @Test func commandsInjectedAfterSTLSNeverFollowTheMarker() throws {
        let channel = try self.makeChannel()
        try channel.writeInbound(ByteBuffer(string: "STLS\r\nCAPA\r\nUSER a\r\nPAS"))
        var frames: [POP3InboundFrame] = []
        while let frame = try channel.readInbound(as: POP3InboundFrame.self) { frames.append(frame) }
        #expect(frames.first == .line(ByteBuffer(string: "STLS")))
        // The session answers STLS.
        try channel.writeOutbound(POP3OutboundFrame.startTLS(ByteBuffer(string: "+OK Begin TLS\r\n")))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "+OK Begin TLS\r\n"))
        channel.embeddedEventLoop.run()
        var after: [POP3InboundFrame] = []
        while let frame = try channel.readInbound(as: POP3InboundFrame.self) { after.append(frame) }
        #expect(after == [.tlsStarted])
        // Bytes now go to the TLS stand-in, not to a line decoder.
        try channel.writeInbound(ByteBuffer(string: "S x\r\nNOOP\r\n"))
        #expect(try channel.readInbound(as: POP3InboundFrame.self) == nil)
        // Exactly one line decoder, placed behind TLS.
        let decoders = try channel.pipeline.syncOperations.handler(type: ByteToMessageHandler<LineFrameDecoder>.self)
        _ = decoders
        _ = try channel.finish()
    }

    /// docs/security-cases.md case 2: "STLS\r\nUSER a\r\nPASS b\r\n" split at every offset, the first part arriving before the
    /// server's +OK and the rest after it (before any ClientHello), or all of it before the +OK when the STLS line
    /// is not complete yet: no injected line ever follows the marker (lines framed before it are dropped by the
    /// session, ServerIntegrationTests).
    @Test func injectionSplitAtEveryOffsetNeverFollowsTheMarker() throws {
        let payload = Array("STLS\r\nUSER a\r\nPASS b\r\n".utf8)
        let stlsLine = "STLS\r\n".utf8.count
        for split in 1...payload.count {
            let channel = try self.makeChannel()
            try channel.writeInbound(ByteBuffer(bytes: payload[..<split]))
            if split < stlsLine { try channel.writeInbound(ByteBuffer(bytes: payload[split...])) }
            var before: [POP3InboundFrame] = []
            while let frame = try channel.readInbound(as: POP3InboundFrame.self) { before.append(frame) }
            #expect(before.first == .line(ByteBuffer(string: "STLS")), "split at \(split)")
            try channel.writeOutbound(POP3OutboundFrame.startTLS(ByteBuffer(string: "+OK Begin TLS\r\n")))
            #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "+OK Begin TLS\r\n"))
            channel.embeddedEventLoop.run()
            if split >= stlsLine { try channel.writeInbound(ByteBuffer(bytes: payload[split...])) }
            var after: [POP3InboundFrame] = []
            while let frame = try channel.readInbound(as: POP3InboundFrame.self) { after.append(frame) }
            #expect(after == [.tlsStarted], "split at \(split)")
            _ = try channel.finish()
        }
    }

    @Test func repliesBeforeSTLSLeaveInPlaintextInOrder() throws {
        let channel = try self.makeChannel()
        try channel.writeOutbound(POP3OutboundFrame.bytes(ByteBuffer(string: "+OK capa\r\n")))
        try channel.writeOutbound(POP3OutboundFrame.startTLS(ByteBuffer(string: "+OK Begin TLS\r\n")))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "+OK capa\r\n"))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "+OK Begin TLS\r\n"))
        _ = try channel.finish()
    }
}
