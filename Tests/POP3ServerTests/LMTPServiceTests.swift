import Foundation
import LMTPCore
import MailStore
import NIOCore
import Testing

@testable import POP3Server

@Suite struct LMTPServiceTests {
    let tcp = LMTPListenAddress.tcp(ListenAddress(host: "0.0.0.0", port: 24))

    @Test func tcpClientsMustBeLoopbackOrTrusted() throws {
        let outside = try SocketAddress(ipAddress: "192.0.2.7", port: 4000)
        let inside = try SocketAddress(ipAddress: "10.1.2.3", port: 4000)
        let trusted = [CIDRNetwork(parsing: "10.0.0.0/8")!]
        #expect(LMTPService.isTrusted(try SocketAddress(ipAddress: "127.0.0.2", port: 1), listener: tcp, trustedNetworks: []))
        #expect(LMTPService.isTrusted(try SocketAddress(ipAddress: "::1", port: 1), listener: tcp, trustedNetworks: []))
        #expect(LMTPService.isTrusted(try SocketAddress(ipAddress: "::ffff:127.0.0.1", port: 1), listener: tcp, trustedNetworks: []))
        #expect(!LMTPService.isTrusted(outside, listener: tcp, trustedNetworks: trusted))
        #expect(!LMTPService.isTrusted(try SocketAddress(ipAddress: "::ffff:192.0.2.7", port: 1), listener: tcp, trustedNetworks: []))
        #expect(LMTPService.isTrusted(inside, listener: tcp, trustedNetworks: trusted))
        #expect(!LMTPService.isTrusted(nil, listener: tcp, trustedNetworks: trusted))
        // A Unix socket's mode decides who connects.
        #expect(LMTPService.isTrusted(nil, listener: .unix("/run/pop3d/lmtp"), trustedNetworks: []))
    }

    @Test func everyDeliveryFailureHasItsReply() {
        #expect(LMTPService.reply(for: .tooLarge("x"), quotaFullTempfail: false) == .messageTooLarge)
        #expect(LMTPService.reply(for: .quotaExceeded("x"), quotaFullTempfail: false) == LMTPReply(552, "5.2.2", "Mailbox full: over quota"))
        #expect(LMTPService.reply(for: .quotaExceeded("x"), quotaFullTempfail: true) == LMTPReply(452, "4.2.2", "Mailbox full: over quota"))
        #expect(LMTPService.reply(for: .temporary("disk full"), quotaFullTempfail: true) == LMTPReply(451, "4.3.0", "Temporary local error, try again later"))
    }

    @Test func traceHeadersNameThisCopysRecipient() throws {
        let headers = LMTPTraceHeaders(
            sender: "", recipient: "bob+x@example.test", clientName: "mx.example.test",
            clientAddress: try SocketAddress(ipAddress: "127.0.0.1", port: 1), hostname: "pop.example.test", id: "1.2",
            utf8: false, date: Date(timeIntervalSince1970: 1_796_601_683)
        )
        #expect(String(decoding: headers.bytes, as: UTF8.self) == """
            Return-Path: <>
            Delivered-To: <bob+x@example.test>
            Received: from mx.example.test ([127.0.0.1])
            \tby pop.example.test (swift-pop3) with LMTP id 1.2
            \tfor <bob+x@example.test>; Mon, 07 Dec 2026 00:01:23 +0000

            """)
    }
}
