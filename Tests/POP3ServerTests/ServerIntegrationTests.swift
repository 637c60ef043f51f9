import Foundation
import NIOCore
import Testing

@testable import POP3Server

/// Integration tests against the real server on ephemeral loopback ports.
@Suite(.serialized) struct ServerIntegrationTests {
    static let message1 = "From: a@example\nSubject: one\n\nHello\n.starts with a dot\n..two dots\n"
    static let message2 = "From: b@example\r\nSubject: two\r\n\r\nCRLF body\r\nline 2\r\nline 3\r\n"

    /// The message as POP3 sends it, un-stuffed: CRLF lines.
    static func wireLines(_ message: String) -> [String] {
        message.replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
    }

    @Test func fullSessionOverImplicitTLS() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        try server.deliver("alice", Self.message1)
        try server.deliver("alice", Self.message2)

        let client = try await server.login("alice")
        let size1 = Self.message1.utf8.count + Self.message1.filter { $0 == "\n" }.count
        let size2 = Self.message2.utf8.count
        #expect(try await client.command("STAT") == "+OK 2 \(size1 + size2)")
        #expect(try await client.command("LIST").hasPrefix("+OK"))
        #expect(try await client.readMultiline() == ["1 \(size1)", "2 \(size2)"])
        #expect(try await client.command("UIDL").hasPrefix("+OK"))
        let uidls = try await client.readMultiline()
        #expect(uidls.count == 2)
        #expect(uidls.allSatisfy { $0.split(separator: " ")[1].count == 16 }, "Dovecot's %08Xu%08Xv format")
        #expect(try await client.command("RETR 1") == "+OK \(size1) octets")
        #expect(try await client.readMultiline() == Self.wireLines(Self.message1))
        #expect(try await client.command("TOP 2 1").hasPrefix("+OK"))
        #expect(try await client.readMultiline() == ["From: b@example", "Subject: two", "", "CRLF body"])
        #expect(try await client.command("DELE 1").hasPrefix("+OK"))
        #expect(try await client.command("QUIT").hasPrefix("+OK"))
        #expect(try await client.readUntilClosed() == [])

        // Re-login right after QUIT: no [IN-USE], message 1 gone, UIDL of message 2 unchanged.
        let again = try await server.login("alice")
        #expect(try await again.command("STAT") == "+OK 1 \(size2)")
        #expect(try await again.command("UIDL 1") == "+OK 1 \(uidls[1].split(separator: " ")[1])")
        _ = try await again.command("QUIT")
    }

    @Test func droppedSessionDeletesNothing() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        try server.deliver("bob", Self.message1)
        let client = try await server.login("bob")
        #expect(try await client.command("DELE 1").hasPrefix("+OK"))
        await client.close()
        // The lock is released when the server notices the close; retry briefly.
        var stat = ""
        for _ in 0..<50 {
            if let again = try? await server.login("bob") {
                stat = try await again.command("STAT")
                _ = try await again.command("QUIT")
                break
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(stat.hasPrefix("+OK 1 "))
    }

    @Test func secondSessionGetsInUse() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let first = try await server.login("carol")
        let second = try await server.connectTLS()
        _ = try await second.command("USER carol")
        #expect(try await second.command("PASS carol-pw") == "-ERR [IN-USE] Mailbox is locked by another session.")
        _ = try await first.command("QUIT")
        _ = try await first.readUntilClosed()
        #expect(try await second.command("PASS carol-pw") == "-ERR No user name given; send USER first.")
        _ = try await second.command("USER carol")
        #expect(try await second.command("PASS carol-pw") == "+OK Logged in.")
    }

    @Test func wrongPasswordAndUnknownUserLookAlike() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let client = try await server.connectTLS()
        #expect(try await client.command("USER nobody") == "+OK Send your password.")
        let unknown = try await client.command("PASS x")
        #expect(try await client.command("USER alice") == "+OK Send your password.")
        let wrong = try await client.command("PASS x")
        #expect(unknown == wrong)
        #expect(wrong == "-ERR [AUTH] Authentication failed.")
    }

    /// `auth.failure_delay` (default 2 s): a wrong password or an unknown user is answered no sooner than the delay,
    /// the first time too; a right password is not delayed. Loopback is a trusted network here, so the escalating
    /// penalty (tested in AuthPenaltyTests) stays out of the measurement; the failure delay applies to everyone.
    @Test func failedLoginsWaitTheFailureDelayFromTheFirstOn() async throws {
        let server = try await TestServer.start { $0.trustedNetworks = [CIDRNetwork(parsing: "127.0.0.0/8")!] }
        defer { Task { await server.stop() } }
        #expect(ServerConfiguration(passwdFile: "", maildirTemplate: "").authenticationFailureDelay == .seconds(2))
        let client = try await server.connectTLS()
        for (user, password) in [("alice", "wrong"), ("nobody", "x"), ("bob", "bob-wrong")] {
            _ = try await client.command("USER \(user)")
            let started = ContinuousClock.now
            #expect(try await client.command("PASS \(password)") == "-ERR [AUTH] Authentication failed.")
            let elapsed = ContinuousClock.now - started
            #expect(elapsed >= .seconds(2), "\(user): answered after \(elapsed)")
        }
        let started = ContinuousClock.now
        _ = try await server.login("carol")
        let elapsed = ContinuousClock.now - started
        #expect(elapsed < .milliseconds(1_900), "a right password took \(elapsed)")
    }

    @Test func saslPlainWithContinuationAndInitialResponse() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let client = try await server.connectTLS()
        let plain = Data("\0alice\0alice-pw".utf8).base64EncodedString()
        #expect(try await client.command("AUTH PLAIN") == "+ ")
        #expect(try await client.command("*") == "-ERR Authentication cancelled.")
        #expect(try await client.command("AUTH PLAIN") == "+ ")
        #expect(try await client.command(plain) == "+OK Logged in.")
        _ = try await client.command("QUIT")
        let second = try await server.connectTLS()
        #expect(try await second.command("AUTH PLAIN \(plain)") == "+OK Logged in.")
        _ = try await second.command("QUIT")
        let third = try await server.connectTLS()
        #expect(try await third.command("AUTH") == "+OK Supported mechanisms follow.")
        #expect(try await third.readMultiline() == ["PLAIN", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
    }

    @Test func stlsUpgradeAndCapabilities() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let client = try await TestClient.connect(port: server.pop3Port)
        #expect(try await client.readLine()?.hasPrefix("+OK") == true)
        #expect(try await client.command("CAPA").hasPrefix("+OK"))
        let before = try await client.readMultiline()
        #expect(before.contains("STLS") && !before.contains("USER") && !before.contains { $0.hasPrefix("SASL") })
        #expect(try await client.command("USER alice").hasPrefix("-ERR [AUTH]"))
        #expect(try await client.command("STLS") == "+OK Begin TLS negotiation now.")
        try await client.startTLS(trustRoot: server.certificate)
        #expect(try await client.command("CAPA").hasPrefix("+OK"))
        let after = try await client.readMultiline()
        #expect(after.contains("USER") && after.contains("SASL PLAIN SCRAM-SHA-256-PLUS SCRAM-SHA-256") && !after.contains("STLS"))
        #expect(try await client.command("STLS") == "-ERR TLS is already active.")
        _ = try await client.command("USER alice")
        #expect(try await client.command("PASS alice-pw") == "+OK Logged in.")
        _ = try await client.command("QUIT")
    }

    /// docs/security-cases.md cases 1–2: commands sent with STLS in one segment are never executed after the handshake.
    @Test(arguments: ["STLS\r\nCAPA\r\n", "STLS\r\nUSER a\r\nPASS b\r\n", "STLS\r\nCAP", "STLS\nQUIT\n"])
    func stlsInjectionIsDiscarded(payload: String) async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let client = try await TestClient.connect(port: server.pop3Port)
        _ = try await client.readLine()
        try await client.send(payload)
        #expect(try await client.readLine() == "+OK Begin TLS negotiation now.")
        try await client.startTLS(trustRoot: server.certificate)
        // The first line after the handshake must answer our own command, not an injected one.
        #expect(try await client.command("USER alice") == "+OK Send your password.")
        #expect(try await client.command("PASS alice-pw") == "+OK Logged in.")
        _ = try await client.command("QUIT")
    }

    @Test func plaintextOnTheTLSPortGetsNoGreeting() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let client = try await TestClient.connect(port: server.pop3sPort)
        try await client.send("CAPA\r\n")
        let lines = try await client.readUntilClosed()
        #expect(lines.allSatisfy { !$0.contains("+OK") })
    }

    /// (End to end with openssl s_client -servername 127.0.0.1 in scripts/tls_proof.py; NIOSSL clients refuse to send it.)
    @Test func sniDecisions() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let tls = try TLSProvider(certificatePath: server.certificate, privateKeyPath: server.folder + "/tls/key.pem")
        #expect(tls.accepts(serverName: "localhost"))
        #expect(tls.accepts(serverName: "LocalHost"))
        #expect(tls.accepts(serverName: "127.0.0.1"), "an IP literal counts as no SNI")
        #expect(tls.accepts(serverName: "::1"))
        #expect(!tls.accepts(serverName: "other.example"))
        #expect(TLSProvider.matches("mail.example.com", names: ["*.example.com"]))
        #expect(!TLSProvider.matches("a.mail.example.com", names: ["*.example.com"]))
        let lax = try TLSProvider(certificatePath: server.certificate, privateKeyPath: server.folder + "/tls/key.pem", strictSNI: false)
        #expect(lax.accepts(serverName: "other.example"))
    }

    @Test(arguments: [(["http/1.1"] as [String], "localhost" as String?), (["imap"], "localhost"), (["pop3"], "other.example")])
    func strictALPNAndSNI(alpn: [String], serverName: String?) async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        await #expect(throws: (any Error).self) {
            let client = try await TestClient.connect(port: server.pop3sPort, tls: server.certificate, serverName: serverName, alpn: alpn)
            guard try await client.readLine() != nil else { throw TestClientError.unexpectedEOF }
        }
        // and the server still serves
        _ = try await server.connectTLS()
    }

    @Test func pipelinedCommandsAreAnsweredInOrder() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        for i in 1...5 { try server.deliver("alice", "Subject: \(i)\n\nbody \(i)\n") }
        let client = try await server.connectTLS()
        try await client.send("USER alice\r\nPASS alice-pw\r\nSTAT\r\nRETR 1\r\nRETR 2\r\nLIST 5\r\nNOOP\r\nQUIT\r\n")
        #expect(try await client.readLine() == "+OK Send your password.")
        #expect(try await client.readLine() == "+OK Logged in.")
        #expect(try await client.readLine()?.hasPrefix("+OK 5 ") == true)
        #expect(try await client.readLine()?.hasSuffix("octets") == true)
        #expect(try await client.readMultiline() == ["Subject: 1", "", "body 1"])
        #expect(try await client.readLine()?.hasSuffix("octets") == true)
        #expect(try await client.readMultiline() == ["Subject: 2", "", "body 2"])
        #expect(try await client.readLine()?.hasPrefix("+OK 5 ") == true)
        #expect(try await client.readLine() == "+OK")
        #expect(try await client.readLine()?.hasPrefix("+OK Logging out") == true)
    }

    @Test func deliveryDuringSessionDoesNotChangeItsListing() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        try server.deliver("alice", "Subject: 1\n\n1\n")
        let client = try await server.login("alice")
        try server.deliver("alice", "Subject: 2\n\n2\n")
        #expect(try await client.command("STAT").hasPrefix("+OK 1 "))
        #expect(try await client.command("LIST 2") == "-ERR No such message.")
        _ = try await client.command("QUIT")
        let again = try await server.login("alice")
        #expect(try await again.command("STAT").hasPrefix("+OK 2 "))
    }

    @Test func largeMessageStreamsIntact() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        var body = "Subject: big\n\n"
        let line = String(repeating: "0123456789", count: 7) + "\n"
        for i in 0..<150_000 { body += (i % 1000 == 0 ? "." : "") + line }  // ~10 MB with dot lines
        try server.deliver("alice", body)
        let client = try await server.login("alice")
        #expect(try await client.command("RETR 1").hasPrefix("+OK"))
        let lines = try await client.readMultiline()
        #expect(lines == Self.wireLines(body))
    }

    /// docs/security-cases.md 66/67: the per-address cap (2 of 100 total) and the total cap (2, with 100 per address).
    @Test(arguments: [(2, 100), (100, 2)])
    func connectionLimits(perAddress: Int, total: Int) async throws {
        let server = try await TestServer.start { configuration in
            configuration.limits.connectionsPerAddress = perAddress
            configuration.limits.connections = total
        }
        defer { Task { await server.stop() } }
        var open: [TestClient] = []
        for _ in 0..<2 {
            let client = try await TestClient.connect(port: server.pop3Port)
            #expect(try await client.readLine()?.hasPrefix("+OK") == true)
            open.append(client)
        }
        let third = try await TestClient.connect(port: server.pop3Port)
        #expect(try await third.readUntilClosed() == ["-ERR [SYS/TEMP] Too many connections, try again later."])
        // Freeing a slot lets the next one in.
        _ = try await open[0].command("QUIT")
        _ = try await open[0].readUntilClosed()
        var admitted = false
        for _ in 0..<50 where !admitted {
            let next = try await TestClient.connect(port: server.pop3Port)
            admitted = try await next.readLine()?.hasPrefix("+OK swift-pop3") == true
            if !admitted { try await Task.sleep(for: .milliseconds(50)) } else { open.append(next) }
        }
        #expect(admitted)
    }

    /// docs/security-cases.md 10: garbage instead of a ClientHello after `+OK` to STLS closes the connection without any
    /// plaintext reply, and the server goes on serving.
    @Test func garbageAfterSTLSClosesWithoutReply() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let client = try await TestClient.connect(port: server.pop3Port)
        _ = try await client.readLine()
        #expect(try await client.command("STLS") == "+OK Begin TLS negotiation now.")
        try await client.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        let after = try await client.readUntilClosed()
        #expect(after.allSatisfy { !$0.contains("OK") && !$0.contains("ERR") }, "no plaintext POP3 reply: \(after)")
        let fresh = try await server.connectTLS()
        #expect(try await fresh.command("NOOP").hasPrefix("-ERR"), "still serving")
    }

    @Test func ipv6Listener() async throws {
        let server = try await TestServer.start { configuration in
            configuration.pop3sListeners = [ListenAddress(parsing: "[::1]:0")!]
        }
        defer { Task { await server.stop() } }
        let client = try await TestClient.connect(host: "::1", port: server.pop3sPort, tls: server.certificate)
        #expect(try await client.readLine()?.hasPrefix("+OK") == true)
        #expect(try await client.command("USER alice") == "+OK Send your password.")
        #expect(try await client.command("PASS alice-pw") == "+OK Logged in.")
    }

    @Test func listenAddressParsing() {
        #expect(ListenAddress(parsing: "127.0.0.1:995") == ListenAddress(host: "127.0.0.1", port: 995))
        #expect(ListenAddress(parsing: "[::1]:995") == ListenAddress(host: "::1", port: 995))
        #expect(ListenAddress(parsing: "::1:995") == nil)
        #expect(ListenAddress(parsing: "host:99999") == nil)
        #expect(ListenAddress(parsing: "host") == nil)
        #expect(ListenAddress(host: "::1", port: 110).description == "[::1]:110")
    }

    @Test func messageRemovedUnderneathASession() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        try server.deliver("alice", "Subject: 1\n\n1\n")
        try server.deliver("alice", "Subject: 2\n\n2\n")
        let client = try await server.login("alice")
        for sub in ["new", "cur"] {
            for file in (try? FileManager.default.contentsOfDirectory(atPath: server.maildir("alice") + "/" + sub)) ?? [] where !file.hasPrefix(".") {
                if let data = FileManager.default.contents(atPath: server.maildir("alice") + "/\(sub)/\(file)"), String(decoding: data, as: UTF8.self).contains("Subject: 1") {
                    try FileManager.default.removeItem(atPath: server.maildir("alice") + "/\(sub)/\(file)")
                }
            }
        }
        #expect(try await client.command("RETR 1") == "-ERR [SYS/TEMP] Message is no longer available.")
        #expect(try await client.command("RETR 2").hasPrefix("+OK"))
        #expect(try await client.readMultiline() == ["Subject: 2", "", "2"])
        #expect(try await client.command("DELE 1").hasPrefix("+OK"))
        #expect(try await client.command("QUIT").hasPrefix("+OK"))
    }
}
