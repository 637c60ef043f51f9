import Crypto
import Foundation
import NIOCore
import NIOSSL
import POP3Client
import POP3NIO
import Testing

/// The POP3Client library against our own server (the retriever binary is tested against Dovecot and
/// malicious servers by tests/test_client_interop.py and tests/test_client_security.py).
@Suite(.serialized) struct ClientAgainstServerTests {
    func configuration(_ server: TestServer, security: ConnectionSecurity = .implicitTLS, trust: TrustPolicy? = nil) -> POP3ClientConfiguration {
        var configuration = POP3ClientConfiguration(
            host: "localhost",
            port: security == .implicitTLS ? server.pop3sPort : server.pop3Port,
            security: security,
            trust: trust ?? .caFile(server.certificate)
        )
        configuration.replyTimeout = .seconds(20)
        return configuration
    }

    /// A listing longer than the client's limit fails the connection rather than growing memory without bound
    /// (docs/security-cases.md case 92: an endless LIST/UIDL); the same for CAPA.
    @Test func listingAndCapabilityLimitsAreEnforced() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        for number in 1...5 { try server.deliver("alice", "Subject: \(number)\n\nx\n") }

        var limited = self.configuration(server)
        limited.maximumListingLines = 4
        let connection = try await POP3Connection.connect(limited)
        try await connection.login(user: "alice", password: "alice-pw")
        await #expect(throws: POP3ClientError.protocolViolation("multi-line reply longer than 4 lines")) {
            _ = try await connection.uidl()
        }
        await connection.close()

        limited.maximumListingLines = 5
        let exact = try await POP3Connection.connect(limited)
        try await exact.login(user: "alice", password: "alice-pw")
        #expect(try await exact.uidl().count == 5)
        #expect(try await exact.list().count == 5)
        try await exact.quit()

        var fewCapabilities = self.configuration(server)
        fewCapabilities.maximumCapabilityLines = 2
        await #expect(throws: POP3ClientError.protocolViolation("multi-line reply longer than 2 lines")) {
            _ = try await POP3Connection.connect(fewCapabilities)
        }
    }

    @Test func implicitTLSLoginListRetrieveDelete() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let bodies = (1...20).map { "Subject: \($0)\n\n.line \($0)\nbody\n" }
        for body in bodies { try server.deliver("alice", body) }

        let connection = try await POP3Connection.connect(self.configuration(server))
        #expect(connection.tls?.alpn == "pop3")
        #expect(connection.tls?.cipherSuite != nil)
        #expect(connection.supportsPipelining)
        try await connection.login(user: "alice", password: "alice-pw")
        let (count, _) = try await connection.stat()
        #expect(count == 20)
        let uidl = try await connection.uidl()
        #expect(uidl.count == 20)
        let sizes = try await connection.list()
        var received: [Int: [UInt8]] = [:]
        var ended: [Int] = []
        try await connection.retrieve(
            Array(1...20),
            begin: { received[$0] = [] },
            chunk: { number, chunk in received[number]! += Array(chunk.readableBytesView) },
            end: { ended.append($0) }
        )
        #expect(ended == Array(1...20))
        for number in 1...20 {
            let expected = Array(bodies[number - 1].replacingOccurrences(of: "\n", with: "\r\n").utf8)
            #expect(received[number] == expected)
            #expect(sizes[number] == expected.count)
        }
        try await connection.delete([1, 2])
        try await connection.quit()

        let again = try await POP3Connection.connect(self.configuration(server))
        try await again.login(user: "alice", password: "alice-pw")
        #expect(try await again.stat().count == 18)
        try await again.quit()
    }

    @Test func startTLSAndCapabilitiesAfterTLS() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let connection = try await POP3Connection.connect(self.configuration(server, security: .startTLS))
        #expect(connection.capabilities.contains("USER"))
        #expect(!connection.capabilities.contains("STLS"), "capabilities are those after TLS")
        #expect(connection.tls != nil)
        try await connection.login(user: "bob", password: "bob pw with spaces")
        try await connection.quit()
    }

    @Test func wrongPasswordIsAnAuthenticationError() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        // auto chose SCRAM-SHA-256-PLUS: the error says so, and how to use PLAIN for an account without SCRAM keys.
        let connection = try await POP3Connection.connect(self.configuration(server))
        await #expect(throws: POP3ClientError.authenticationFailed(code: .auth, text: "Authentication failed. \(Self.autoSCRAMHint)")) {
            try await connection.login(user: "alice", password: "wrong")
        }
        await connection.close()
    }

    static let autoSCRAMHint =
        "(SCRAM-SHA-256-PLUS was chosen automatically; if the account has no SCRAM credentials on the server, use --auth plain)"

    /// Every login method of the client against our server, over implicit TLS and STLS (SCRAM-PLUS binds to the
    /// certificate either way); the users' {PLAIN} fields give SCRAM keys derived on the fly.
    @Test(arguments: [AuthenticationMethod.scramSHA256Plus, .scramSHA256, .plain, .user, .auto])
    func everyLoginMethod(_ method: AuthenticationMethod) async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        for security in [ConnectionSecurity.implicitTLS, .startTLS] {
            var configuration = self.configuration(server, security: security)
            configuration.authentication = method
            let connection = try await POP3Connection.connect(configuration)
            #expect(connection.resolve(.auto) == .scramSHA256Plus)
            try await connection.login(user: "bob", password: "bob pw with spaces")
            #expect(try await connection.stat().count == 0)
            try await connection.quit()
            var wrong = configuration
            wrong.authentication = method
            let failing = try await POP3Connection.connect(wrong)
            let text = method == .auto ? "Authentication failed. \(Self.autoSCRAMHint)" : "Authentication failed."
            await #expect(throws: POP3ClientError.authenticationFailed(code: .auth, text: text)) {
                try await failing.login(user: "bob", password: "bob pw")
            }
            await failing.close()
        }
    }

    /// `auto` takes the strongest offered; an explicit mechanism the server does not offer is an error, never a
    /// weaker one.
    @Test func explicitMechanismIsNeverDowngraded() async throws {
        let server = try await TestServer.start { $0.saslMechanisms = [.plain, .scramSHA256] }
        defer { Task { await server.stop() } }
        var configuration = self.configuration(server)
        configuration.authentication = .scramSHA256Plus
        let connection = try await POP3Connection.connect(configuration)
        #expect(connection.resolve(.auto) == .scramSHA256)
        await #expect(throws: POP3ClientError.mechanismNotOffered("SCRAM-SHA-256-PLUS")) {
            try await connection.login(user: "alice", password: "alice-pw")
        }
        await connection.close()
    }

    @Test func certificatePins() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let pem = try String(contentsOfFile: server.certificate, encoding: .utf8)
        let certificate = try NIOSSLCertificate(bytes: Array(pem.utf8), format: .pem)
        let der = try certificate.toDERBytes()
        let spki = try certificate.extractPublicKey().toSPKIBytes()
        for pinned in [der, spki] {
            let pin = TrustPolicy.sha256Pin(Array(SHA256.hash(data: pinned)))
            let connection = try await POP3Connection.connect(self.configuration(server, trust: pin))
            try await connection.quit()
        }
        let wrong = TrustPolicy.sha256Pin([UInt8](repeating: 0xAB, count: 32))
        await #expect(throws: POP3ClientError.self) {
            _ = try await POP3Connection.connect(self.configuration(server, trust: wrong))
        }
    }

    @Test func systemTrustRefusesASelfSignedServer() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        await #expect(throws: POP3ClientError.self) {
            _ = try await POP3Connection.connect(self.configuration(server, trust: .system))
        }
    }

    @Test func pinParsing() {
        let hex = String(repeating: "ab", count: 32)
        #expect(TrustPolicy.pin(parsing: "sha256:\(hex)") == .sha256Pin([UInt8](repeating: 0xAB, count: 32)))
        #expect(TrustPolicy.pin(parsing: "sha256:" + (0..<32).map { _ in "AB" }.joined(separator: ":")) != nil)
        #expect(TrustPolicy.pin(parsing: "sha1:\(hex)") == nil)
        #expect(TrustPolicy.pin(parsing: "sha256:abc") == nil)
        #expect(TrustPolicy.pin(parsing: "sha256:" + String(repeating: "zz", count: 32)) == nil)
    }

    /// What `pop3 probe` prints comes from ServerProbe: TLS, capabilities, login ways and the presented chain.
    @Test func probeReportsWhatTheServerOffers() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let report = await ServerProbe.run(self.configuration(server))
        #expect(report.error == nil)
        #expect(report.tls?.version.lowercased().hasPrefix("tlsv1") == true)
        #expect(report.tls?.cipher?.hasPrefix("0x") == false, "a suite of the policy has a name")
        #expect(report.login == ["SASL PLAIN SCRAM-SHA-256-PLUS SCRAM-SHA-256", "USER/PASS"])
        #expect(report.automaticMethod == .scramSHA256Plus)
        let chain = try #require(report.certificateChain)
        #expect(chain.count == 1)
        #expect(chain[0].sha256.count == 64 && chain[0].publicKeySHA256?.count == 64)
        #expect(chain[0].subject?.contains("localhost") == true)
        #expect(TLSCipherSuite.name(0x1301) == "TLS_AES_128_GCM_SHA256")
        #expect(TLSCipherSuite.name(0x1304) == "0x1304")
    }
}
