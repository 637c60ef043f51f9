import NIOCore
import NIOEmbedded
import Testing

@testable import POP3NIO
import POP3Core

/// Builds a minimal TLS 1.2 ClientHello record with optional SNI and ALPN extensions.
func makeClientHello(serverName: String?, alpn: [String]?) -> ByteBuffer {
    var extensions = ByteBuffer()
    if let serverName {
        var entry = ByteBuffer()
        entry.writeInteger(UInt8(0))
        entry.writeInteger(UInt16(serverName.utf8.count))
        entry.writeString(serverName)
        extensions.writeInteger(UInt16(0))
        extensions.writeInteger(UInt16(entry.readableBytes + 2))
        extensions.writeInteger(UInt16(entry.readableBytes))
        extensions.writeBuffer(&entry)
    }
    if let alpn {
        var list = ByteBuffer()
        for name in alpn {
            list.writeInteger(UInt8(name.utf8.count))
            list.writeString(name)
        }
        extensions.writeInteger(UInt16(16))
        extensions.writeInteger(UInt16(list.readableBytes + 2))
        extensions.writeInteger(UInt16(list.readableBytes))
        extensions.writeBuffer(&list)
    }
    var body = ByteBuffer()
    body.writeBytes([3, 3])
    body.writeBytes([UInt8](repeating: 7, count: 32))
    body.writeInteger(UInt8(0))  // session id
    body.writeInteger(UInt16(2))
    body.writeBytes([0xC0, 0x2F])
    body.writeBytes([1, 0])  // compression: null
    body.writeInteger(UInt16(extensions.readableBytes))
    body.writeBuffer(&extensions)
    var handshake = ByteBuffer()
    handshake.writeInteger(UInt8(1))
    handshake.writeBytes([0, UInt8(body.readableBytes >> 8), UInt8(body.readableBytes & 0xFF)])
    handshake.writeBuffer(&body)
    var record = ByteBuffer()
    record.writeBytes([22, 3, 1])
    record.writeInteger(UInt16(handshake.readableBytes))
    record.writeBuffer(&handshake)
    return record
}

@Suite struct ClientHelloGuardTests {
    @Test(arguments: [
        (nil, nil, nil),
        ("localhost", ["pop3"], nil),
        (nil, ["http/1.1", "pop3"], nil),
        (nil, ["http/1.1"], ClientHelloGuard.Alert.noApplicationProtocol),
        (nil, ["h2"], .noApplicationProtocol),
        (nil, ["imap"], .noApplicationProtocol),
        ("evil.example", nil, .unrecognizedName),
        ("LOCALHOST", nil, nil),
    ] as [(String?, [String]?, ClientHelloGuard.Alert?)])
    func decides(serverName: String?, alpn: [String]?, expected: ClientHelloGuard.Alert?) throws {
        let channel = EmbeddedChannel(handler: ClientHelloGuard(acceptsServerName: { $0.lowercased() == "localhost" }))
        let hello = makeClientHello(serverName: serverName, alpn: alpn)
        #expect(ClientHelloParser.parse(hello) == .clientHello(ClientHelloSummary(serverName: serverName, applicationProtocols: alpn)))
        // Feed it byte by byte: the guard must wait for the whole ClientHello.
        for byte in hello.readableBytesView {
            try channel.writeInbound(ByteBuffer(bytes: [byte]))
        }
        if let expected {
            let alert = try #require(try channel.readOutbound(as: ByteBuffer.self))
            #expect(Array(alert.readableBytesView) == [21, 3, 3, 0, 2, 2, expected.rawValue])
            #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
            channel.embeddedEventLoop.run()
            #expect(!channel.isActive)
        } else {
            let passed = try #require(try channel.readInbound(as: ByteBuffer.self))
            #expect(passed == hello)
            #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
            _ = try channel.finish()
        }
    }

    @Test func plaintextIsPassedOnForTLSToReject() throws {
        let channel = EmbeddedChannel(handler: ClientHelloGuard(acceptsServerName: { _ in true }))
        try channel.writeInbound(ByteBuffer(string: "CAPA\r\n"))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "CAPA\r\n"))
        _ = try channel.finish()
    }

    @Test func truncatedAndGarbageHellosDoNotCrash() {
        let hello = makeClientHello(serverName: "localhost", alpn: ["pop3"])
        for length in 0..<hello.readableBytes {
            let prefix = hello.getSlice(at: 0, length: length)!
            #expect(ClientHelloParser.parse(prefix) == .needMoreData || length < 5)
        }
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2_000 {
            var bytes = Array(hello.readableBytesView)
            for _ in 0..<4 { bytes[Int.random(in: 5..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator) }
            _ = ClientHelloParser.parse(ByteBuffer(bytes: bytes))
        }
    }
}
