import NIOCore
import NIOEmbedded
import Testing

@testable import POP3NIO
import POP3Core

func proxyHeader(command: UInt8 = 0x21, family: UInt8 = 0x11, addresses: [UInt8]) -> [UInt8] {
    ProxyHeaderV2.signature + [command, family, UInt8(addresses.count >> 8), UInt8(addresses.count & 0xFF)] + addresses
}

@Suite struct ProxyHeaderTests {
    static let v4 = proxyHeader(addresses: [203, 0, 113, 7, 192, 0, 2, 1, 0xC3, 0x50, 0x03, 0xE3])  // :50000 → :995

    @Test func parsesTCP4() throws {
        var buffer = ByteBuffer(bytes: Self.v4 + Array("rest".utf8))
        let header = try #require(try ProxyHeaderV2.parse(&buffer))
        #expect(header.source == (try SocketAddress(ipAddress: "203.0.113.7", port: 50000)))
        #expect(header.destination == (try SocketAddress(ipAddress: "192.0.2.1", port: 995)))
        #expect(String(buffer: buffer) == "rest")
    }

    @Test func parsesTCP6AndSkipsTLVs() throws {
        var addresses = [UInt8](repeating: 0, count: 36)
        addresses[0] = 0x20; addresses[1] = 0x01; addresses[2] = 0x0d; addresses[3] = 0xb8; addresses[15] = 9
        addresses[16 + 15] = 1
        addresses[32] = 0x12; addresses[33] = 0x34; addresses[35] = 110
        let tlv: [UInt8] = [0x04, 0x00, 0x02, 0xAA, 0xBB]
        var buffer = ByteBuffer(bytes: proxyHeader(family: 0x21, addresses: addresses + tlv))
        let header = try #require(try ProxyHeaderV2.parse(&buffer))
        #expect(header.source == (try SocketAddress(ipAddress: "2001:db8::9", port: 0x1234)))
        #expect(buffer.readableBytes == 0)
    }

    @Test func localCommandHasNoAddress() throws {
        var buffer = ByteBuffer(bytes: proxyHeader(command: 0x20, family: 0x00, addresses: []))
        #expect(try ProxyHeaderV2.parse(&buffer) == ProxyHeaderV2(source: nil, destination: nil))
    }

    @Test func needsMoreDataAtEveryPrefix() throws {
        for length in 0..<Self.v4.count {
            var buffer = ByteBuffer(bytes: Self.v4.prefix(length))
            #expect(try ProxyHeaderV2.parse(&buffer) == nil)
        }
    }

    @Test func rejectsBadInput() {
        var http = ByteBuffer(string: "GET / HTTP/1.1\r\n")
        #expect(throws: ProxyHeaderV2.ParseError.notAProxyHeader) { try ProxyHeaderV2.parse(&http) }
        var v1 = ByteBuffer(bytes: proxyHeader(command: 0x11, addresses: []))
        #expect(throws: ProxyHeaderV2.ParseError.unsupportedVersion) { try ProxyHeaderV2.parse(&v1) }
        var long = ByteBuffer(bytes: ProxyHeaderV2.signature + [0x21, 0x11, 0xFF, 0xFF])
        #expect(throws: ProxyHeaderV2.ParseError.payloadTooLong(65535)) { try ProxyHeaderV2.parse(&long) }
        var short = ByteBuffer(bytes: proxyHeader(addresses: [1, 2, 3]))
        #expect(throws: ProxyHeaderV2.ParseError.truncatedAddresses) { try ProxyHeaderV2.parse(&short) }
    }

    @Test func handlerPassesTheRestOnAndLeaves() throws {
        let seen = NIOLockedValueBoxForTests<ProxyHeaderV2?>(nil)
        let channel = EmbeddedChannel(handler: ProxyProtocolHandler { header in seen.set(header) })
        for byte in Self.v4 { try channel.writeInbound(ByteBuffer(bytes: [byte])) }
        try channel.writeInbound(ByteBuffer(string: "CAPA\r\n"))
        #expect(seen.get()?.source == (try SocketAddress(ipAddress: "203.0.113.7", port: 50000)))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "CAPA\r\n"))
        #expect(throws: (any Error).self) { try channel.pipeline.syncOperations.handler(type: ProxyProtocolHandler.self) }
        _ = try channel.finish()
    }

    @Test func handlerClosesOnGarbage() throws {
        let channel = EmbeddedChannel(handler: ProxyProtocolHandler { _ in })
        #expect(throws: ProxyHeaderV2.ParseError.notAProxyHeader) { try channel.writeInbound(ByteBuffer(string: "CAPA\r\n")) }
        channel.embeddedEventLoop.run()
        #expect(!channel.isActive)
    }
}

/// A tiny lock box for test callbacks.
final class NIOLockedValueBoxForTests<T: Sendable>: @unchecked Sendable {
    // @unchecked: guarded by the lock.
    private let lock = NSLockForTests()
    private var value: T
    init(_ value: T) { self.value = value }
    func set(_ newValue: T) { self.lock.withLock { self.value = newValue } }
    func get() -> T { self.lock.withLock { self.value } }
}

import Foundation
typealias NSLockForTests = NSLock
