import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing

@testable import POP3NIO

@Suite struct LineFrameDecoderTests {
    func line(_ s: String) -> POP3InboundFrame { .line(ByteBuffer(string: s)) }

    @Test func everyChunkingGivesTheSameLines() throws {
        let long = String(repeating: "x", count: 300)
        try ByteToMessageDecoderVerifier.verifyDecoder(
            stringInputOutputPairs: [
                ("USER a\r\n", [line("USER a")]),
                ("PASS b\n", [line("PASS b")]),
                ("STAT\r\nLIST\r\n", [line("STAT"), line("LIST")]),
                ("\r\n", [line("")]),
                ("a\rb\r\n", [line("a\rb")]),
                ("\(long)\r\nNOOP\r\n", [.overlongLine, line("NOOP")]),
                ("\(String(repeating: "y", count: 253))\r\n", [line(String(repeating: "y", count: 253))]),
                ("\(String(repeating: "z", count: 254))\r\n", [.overlongLine]),
            ],
            decoderFactory: { LineFrameDecoder(maximumLineLength: 255) }
        )
    }

    @Test func eightyKilobytesWithoutNewlineIsOneLimitErrorAndBoundedMemory() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(LineFrameDecoder(maximumLineLength: 255)))
        var frames: [POP3InboundFrame] = []
        for _ in 0..<80 {
            try channel.writeInbound(ByteBuffer(repeating: UInt8(ascii: "A"), count: 1024))
            while let frame = try channel.readInbound(as: POP3InboundFrame.self) { frames.append(frame) }
        }
        try channel.writeInbound(ByteBuffer(string: "\r\nQUIT\r\n"))
        while let frame = try channel.readInbound(as: POP3InboundFrame.self) { frames.append(frame) }
        #expect(frames == [.overlongLine, line("QUIT")])
        _ = try channel.finish()
    }

    @Test func partialLineAtEOFIsDropped() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(LineFrameDecoder(maximumLineLength: 255)))
        try channel.writeInbound(ByteBuffer(string: "QUIT"))
        #expect(try channel.readInbound(as: POP3InboundFrame.self) == nil)
        #expect(try channel.finish().isClean)
    }
}
