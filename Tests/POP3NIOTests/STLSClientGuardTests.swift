import NIOCore
import NIOEmbedded
import Testing

@testable import POP3NIO

/// The client's side of STLS (docs/security-cases.md cases 80–82): the reply line is passed on, TLS goes in front in the same
/// tick, and any plaintext byte that came with or after the reply fails the connection.
@Suite struct STLSClientGuardTests {
    func makeChannel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(STLSClientGuard(maximumLineLength: 512) { RecordingTLSStandIn() })
        return channel
    }

    func hasTLS(_ channel: EmbeddedChannel) -> Bool {
        (try? channel.pipeline.syncOperations.handler(type: RecordingTLSStandIn.self)) != nil
    }

    /// The +OK split at every offset: the line is passed on once, whole; TLS is then in front and the guard gone,
    /// so what the server sends next (its TLS records) reaches TLS, not the client.
    @Test func okReplyAtEverySplitSwitchesToTLS() throws {
        let reply = Array("+OK Begin TLS negotiation now.\r\n".utf8)
        for split in 0...reply.count {
            let channel = try self.makeChannel()
            try channel.writeInbound(ByteBuffer(bytes: reply[..<split]))
            try channel.writeInbound(ByteBuffer(bytes: reply[split...]))
            #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(bytes: reply), "split at \(split)")
            #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
            #expect(self.hasTLS(channel))
            #expect((try? channel.pipeline.syncOperations.handler(type: STLSClientGuard.self)) == nil)
            try channel.writeInbound(ByteBuffer(string: "\u{16}\u{03}\u{03} server hello"))
            #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
            _ = try channel.finish()
        }
    }

    /// Bytes after the reply in the same read (an injected response, "+OK\r\n+OK fake CAPA…") fail the connection
    /// before anything is passed on, whatever the split of the reply itself.
    @Test func bytesWithTheReplyFailTheConnection() throws {
        let injected = Array("+OK Begin TLS\r\n+OK injected\r\nSASL PLAIN\r\n.\r\n".utf8)
        let replyLength = "+OK Begin TLS\r\n".utf8.count
        for split in 0..<replyLength {
            let channel = try self.makeChannel()
            try channel.writeInbound(ByteBuffer(bytes: injected[..<split]))
            #expect(throws: STLSClientError.dataAfterSTLSReply, "split at \(split)") {
                try channel.writeInbound(ByteBuffer(bytes: injected[split...]))
            }
            #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
            #expect(!self.hasTLS(channel))
            #expect(!channel.isActive)
            self.dispose(channel)
        }
    }

    @Test func refusalIsPassedOnWithoutTLS() throws {
        let channel = try self.makeChannel()
        try channel.writeInbound(ByteBuffer(string: "-ERR TLS not available\r\n"))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "-ERR TLS not available\r\n"))
        #expect(!self.hasTLS(channel))
        _ = try channel.finish()
    }

    @Test func endlessReplyLineFails() throws {
        let channel = try self.makeChannel()
        try channel.writeInbound(ByteBuffer(repeating: UInt8(ascii: "A"), count: 512))
        #expect(throws: STLSClientError.statusLineTooLong) {
            try channel.writeInbound(ByteBuffer(string: "A"))
        }
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
        #expect(!self.hasTLS(channel))
        self.dispose(channel)
    }

    /// A channel the guard closed: run what the close scheduled and tear the pipeline down (else LeakSanitizer
    /// reports the handlers).
    func dispose(_ channel: EmbeddedChannel) {
        channel.embeddedEventLoop.run()
        _ = try? channel.finish()
    }
}
