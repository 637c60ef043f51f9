import NIOCore
import NIOEmbedded
import Testing

@testable import POP3NIO

@Suite struct SessionTimeoutHandlerTests {
    func makeChannel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(
            SessionTimeoutHandler(preAuthenticationTimeout: .seconds(60), idleTimeout: .seconds(600))
        )
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    @Test func preAuthenticationDeadlineIsAbsolute() throws {
        let channel = try self.makeChannel()
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        for _ in 0..<5 {
            channel.embeddedEventLoop.advanceTime(by: .seconds(11))
            try channel.writeInbound(ByteBuffer(string: "NOOP"))  // activity does not extend it
        }
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(6))
        #expect(!channel.isActive)
    }

    @Test func idleTimerAfterLoginResetsOnActivity() throws {
        let channel = try self.makeChannel()
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        channel.pipeline.fireUserInboundEventTriggered(SessionAuthenticatedEvent())
        channel.embeddedEventLoop.advanceTime(by: .seconds(500))
        try channel.writeInbound(ByteBuffer(string: "STAT"))
        channel.embeddedEventLoop.advanceTime(by: .seconds(500))
        #expect(channel.isActive, "activity 500 s ago: not idle yet")
        try channel.writeOutbound(ByteBuffer(string: "+OK"))  // a slow download counts as activity
        channel.embeddedEventLoop.advanceTime(by: .seconds(599))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(!channel.isActive)
    }

    @Test func loginCancelsThePreAuthDeadline() throws {
        let channel = try self.makeChannel()
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        channel.embeddedEventLoop.advanceTime(by: .seconds(30))
        channel.pipeline.fireUserInboundEventTriggered(SessionAuthenticatedEvent())
        channel.embeddedEventLoop.advanceTime(by: .seconds(120))
        #expect(channel.isActive)
    }
}
