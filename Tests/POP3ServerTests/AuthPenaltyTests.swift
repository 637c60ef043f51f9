import Crypto
import Foundation
import NIOCore
import Testing

@testable import POP3Server

@Suite struct AuthPenaltyTableTests {
    let t0 = ContinuousClock.now
    func credential(_ s: String) -> SHA256Digest { SHA256.hash(data: Array(s.utf8)) }

    @Test func delaysGrowTwoFourEightFifteen() {
        var table = AuthPenaltyTable()
        var now = self.t0
        #expect(table.admit("a", now: now) == .zero)
        var observed: [Duration] = []
        for attempt in 1...6 {
            table.recordFailure("a", credential: self.credential("pw\(attempt)"), now: now)
            now = now + .seconds(100)  // far apart, so slots do not pile up
            observed.append(table.admit("a", now: now))
        }
        #expect(observed == [.seconds(2), .seconds(4), .seconds(8), .seconds(15), .seconds(15), .seconds(15)])
    }

    @Test func sameWrongPasswordDoesNotEscalate() {
        var table = AuthPenaltyTable()
        for i in 0..<5 { table.recordFailure("a", credential: self.credential("same"), now: self.t0 + .seconds(i * 100)) }
        #expect(table.failures(for: "a") == 1)
        #expect(table.admit("a", now: self.t0 + .seconds(1000)) == .seconds(2))
    }

    @Test func parallelAttemptsAreSpacedNotBypassed() {
        var table = AuthPenaltyTable()
        table.recordFailure("a", credential: self.credential("x"), now: self.t0)
        table.recordFailure("a", credential: self.credential("y"), now: self.t0)
        // Five connections try at the same instant: each waits one more penalty than the one before.
        let waits = (0..<5).map { _ in table.admit("a", now: self.t0) }
        #expect(waits == [.seconds(4), .seconds(8), .seconds(12), .seconds(16), .seconds(20)])
    }

    @Test func addressesAreIndependentAndForgottenAfterAnHour() {
        var table = AuthPenaltyTable()
        table.recordFailure("a", credential: self.credential("x"), now: self.t0)
        #expect(table.admit("b", now: self.t0) == .zero)
        #expect(table.admit("a", now: self.t0 + .seconds(3601)) == .zero)
        #expect(table.failures(for: "a") == 0)
    }

    @Test func tableIsBounded() {
        var table = AuthPenaltyTable(maximumEntries: 100)
        for i in 0..<1_000 { table.recordFailure("k\(i)", credential: self.credential("x"), now: self.t0 + .milliseconds(i)) }
        #expect(table.count <= 100)
        #expect(table.failures(for: "k999") == 1, "the newest entries stay")
    }

    @Test func cidrMatching() throws {
        let v4 = try #require(CIDRNetwork(parsing: "10.1.0.0/16"))
        #expect(v4.contains(try SocketAddress(ipAddress: "10.1.200.3", port: 1)))
        #expect(!v4.contains(try SocketAddress(ipAddress: "10.2.0.1", port: 1)))
        #expect(v4.contains(try SocketAddress(ipAddress: "::ffff:10.1.0.9", port: 1)))
        let v6 = try #require(CIDRNetwork(parsing: "2001:db8::/32"))
        #expect(v6.contains(try SocketAddress(ipAddress: "2001:db8:1::1", port: 1)))
        #expect(!v6.contains(try SocketAddress(ipAddress: "2001:db9::1", port: 1)))
        #expect(CIDRNetwork(parsing: "127.0.0.1")?.contains(try SocketAddress(ipAddress: "127.0.0.1", port: 1)) == true)
        #expect(CIDRNetwork(parsing: "10.0.0.0/33") == nil)
        #expect(CIDRNetwork(parsing: "example.com/8") == nil)
    }

    @Test func ipv6PenaltyKeyIsThe48Prefix() throws {
        let a = ConnectionLimiter.key(for: try SocketAddress(ipAddress: "2001:db8:aaaa:1::1", port: 1))
        let b = ConnectionLimiter.key(for: try SocketAddress(ipAddress: "2001:db8:aaaa:ffff::2", port: 1))
        let c = ConnectionLimiter.key(for: try SocketAddress(ipAddress: "2001:db8:aaab::1", port: 1))
        #expect(a == b)
        #expect(a != c)
    }
}

/// End to end with generous bounds (the machines are shared and noisy).
@Suite(.serialized) struct AuthPenaltyIntegrationTests {
    func attempt(_ server: TestServer, password: String) async throws -> (reply: String, seconds: Double) {
        let client = try await server.connectTLS()
        _ = try await client.command("USER alice")
        let start = ContinuousClock.now
        let reply = try await client.command("PASS \(password)")
        let elapsed = ContinuousClock.now - start
        await client.close()
        return (reply, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    }

    /// The escalating penalty alone: the fixed failure delay (`auth.failure_delay`, tested in
    /// ServerIntegrationTests) is off here so that each measured wait is the penalty's.
    @Test func failuresSlowDownTheNextAttemptWhateverItsOutcome() async throws {
        let server = try await TestServer.start { $0.authenticationFailureDelay = .zero }
        defer { Task { await server.stop() } }
        let first = try await self.attempt(server, password: "wrong-1")
        #expect(first.reply == "-ERR [AUTH] Authentication failed.")
        #expect(first.seconds < 1.5, "no penalty before the first failure")
        let second = try await self.attempt(server, password: "wrong-2")
        #expect(second.seconds >= 1.8, "2 s after one failure, got \(second.seconds)")
        // The right password now also waits (4 s): the delay does not reveal the outcome.
        let right = try await self.attempt(server, password: "alice-pw")
        #expect(right.reply == "+OK Logged in.")
        #expect(right.seconds >= 3.5, "4 s after two failures, got \(right.seconds)")
    }

    @Test func trustedNetworksAreExempt() async throws {
        let server = try await TestServer.start {
            $0.trustedNetworks = [CIDRNetwork(parsing: "127.0.0.0/8")!]
            $0.authenticationFailureDelay = .zero
        }
        defer { Task { await server.stop() } }
        for i in 0..<3 {
            let result = try await self.attempt(server, password: "wrong-\(i)")
            #expect(result.seconds < 1.5)
        }
    }
}

/// PROXY v2 from a trusted proxy: the penalty and logs use the client the header names.
@Suite(.serialized) struct ProxyProtocolIntegrationTests {
    static func header(client: [UInt8]) -> [UInt8] {
        let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
        return signature + [0x21, 0x11, 0, 12] + client + [127, 0, 0, 1, 0xC3, 0x50, 0x03, 0xE3]
    }

    func proxiedAttempt(_ server: TestServer, client: [UInt8], password: String) async throws -> (String, Double) {
        let connection = try await TestClient.connect(port: server.pop3sPort)
        try await connection.channel.outbound.write(ByteBuffer(bytes: Self.header(client: client)))
        try await connection.startTLS(trustRoot: server.certificate)
        guard try await connection.readLine()?.hasPrefix("+OK") == true else { throw TestClientError.unexpectedEOF }
        _ = try await connection.command("USER alice")
        let start = ContinuousClock.now
        let reply = try await connection.command("PASS \(password)")
        let elapsed = ContinuousClock.now - start
        await connection.close()
        return (reply, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    }

    @Test func penaltyFollowsTheProxiedClient() async throws {
        let server = try await TestServer.start { $0.proxyNetworks = [CIDRNetwork(parsing: "127.0.0.0/8")!] }
        defer { Task { await server.stop() } }
        let attacker: [UInt8] = [203, 0, 113, 66]
        let bystander: [UInt8] = [198, 51, 100, 7]
        _ = try await self.proxiedAttempt(server, client: attacker, password: "wrong-1")
        let again = try await self.proxiedAttempt(server, client: attacker, password: "wrong-2")
        #expect(again.1 >= 1.8, "the proxied attacker is penalised: \(again.1) s")
        let other = try await self.proxiedAttempt(server, client: bystander, password: "alice-pw")
        #expect(other.0 == "+OK Logged in.")
        #expect(other.1 < 1.5, "another client behind the same proxy is not: \(other.1) s")
    }

    @Test func aTrustedProxyMustSendAHeader() async throws {
        let server = try await TestServer.start { $0.proxyNetworks = [CIDRNetwork(parsing: "127.0.0.0/8")!] }
        defer { Task { await server.stop() } }
        let client = try await TestClient.connect(port: server.pop3Port)
        try await client.send("CAPA\r\n")
        let lines = try await client.readUntilClosed()
        #expect(!lines.contains { $0.hasPrefix("+OK") && $0.contains("Capability") })
    }

    @Test func untrustedPeersCannotClaimAnAddress() async throws {
        let server = try await TestServer.start()  // no proxy networks
        defer { Task { await server.stop() } }
        let client = try await TestClient.connect(port: server.pop3Port)
        _ = try await client.readLine()
        // The header is just bytes to a POP3 session: no line of it is taken as an address.
        try await client.channel.outbound.write(ByteBuffer(bytes: Self.header(client: [203, 0, 113, 66])))
        var replies: [String] = []
        while let line = try await client.readLine() { replies.append(line) }
        #expect(replies.allSatisfy { $0.hasPrefix("-ERR") || $0.hasPrefix("+OK Logging out") })
    }
}
