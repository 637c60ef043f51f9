import POP3Core
import Testing

@testable import SASL

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

@Suite struct SCRAMTests {
    /// RFC 7677 §3.
    @Test func rfc7677ClientExchange() throws {
        var client = SCRAMClientExchange(
            mechanism: .scramSHA256, user: "user", password: "pencil", channelBinding: nil,
            tlsActive: false, serverOffersPlus: false, clientNonce: "rOprNGfwEbeRWgbNEkqO"
        )
        #expect(text(client.clientFirst()) == "n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        let final = try client.receiveServerFirst(
            bytes("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
        )
        #expect(text(final) == "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
        try client.receiveServerFinal(bytes("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
        #expect(throws: SCRAMClientError.serverSignatureMismatch) {
            try client.receiveServerFinal(bytes("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
        }
    }

    /// RFC 7677 §3, the server's side, with the keys derived from the password.
    @Test func rfc7677ServerExchange() throws {
        let keys = SCRAMKeys.derive(password: "pencil", salt: Base64.decode("W22ZaJ0SNY7soEsUEjb6gQ==")!, iterations: 4096, algorithm: .sha256)
        var server = SCRAMServerExchange(mechanism: .scramSHA256, channelBinding: nil, plusOffered: false, serverNonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
        #expect(try server.receiveClientFirst(bytes("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")) == "user")
        #expect(text(server.serverFirst(keys: keys)) == "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
        let final = try server.receiveClientFinal(
            bytes("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
        )
        #expect(text(final) == "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    }

    /// RFC 5802 §5 (SCRAM-SHA-1).
    @Test func rfc5802SHA1() throws {
        var client = SCRAMClientExchange(
            mechanism: .scramSHA1, user: "user", password: "pencil", channelBinding: nil,
            tlsActive: false, serverOffersPlus: false, clientNonce: "fyko+d2lbbFgONRv9qkxdawL"
        )
        _ = client.clientFirst()
        let final = try client.receiveServerFirst(bytes("r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"))
        #expect(text(final) == "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
        try client.receiveServerFinal(bytes("v=rmF9pqV8S7suAoZWja4dJRkFsKQ="))
    }

    /// `doveadm pw -s SCRAM-SHA-256 -p pencil` output is read as is.
    @Test func dovecotEncodedKeys() throws {
        let keys = try #require(
            SCRAMKeys(
                dovecotEncoded: "4096,m1k6GC8TT2hPI103PqjDVg==,zEkVFdpS2QHklU2DDnnHYNWLLjLzkJ6ZA5BoSrUaanw=,VIohQ6klkNhv53s7MS16A09+zjLwQokFWX+nK7LDtn0=",
                algorithm: .sha256
            )
        )
        #expect(keys.iterations == 4096)
        #expect(keys.matches(password: "pencil"))
        #expect(!keys.matches(password: "pencil2"))
        #expect(SCRAMKeys(dovecotEncoded: keys.dovecotEncoded, algorithm: .sha256) == keys)
        // Wrong key lengths for the algorithm, missing parts, a zero count.
        #expect(SCRAMKeys(dovecotEncoded: keys.dovecotEncoded, algorithm: .sha1) == nil)
        #expect(SCRAMKeys(dovecotEncoded: "4096,m1k6GC8TT2hPI103PqjDVg==", algorithm: .sha256) == nil)
        #expect(SCRAMKeys(dovecotEncoded: "0" + keys.dovecotEncoded.drop(while: { $0 != "," }), algorithm: .sha256) == nil)
        // A count past the stored bound (which would stall a login, or past UInt32 trap) makes the field unusable.
        #expect(SCRAMKeys(dovecotEncoded: "10000001" + keys.dovecotEncoded.drop(while: { $0 != "," }), algorithm: .sha256) == nil)
        #expect(SCRAMKeys(dovecotEncoded: "99999999999" + keys.dovecotEncoded.drop(while: { $0 != "," }), algorithm: .sha256) == nil)
    }

    /// A full exchange between our client and server, for each mechanism, with and without channel binding.
    @Test(arguments: [SASLMechanism.scramSHA256, .scramSHA256Plus, .scramSHA1, .scramSHA1Plus])
    func roundTrip(mechanism: SASLMechanism) throws {
        let binding = ChannelBinding(kind: .tlsServerEndPoint, data: Array(repeating: 7, count: 32))
        let keys = SCRAMKeys.derive(password: "s3cret", salt: SCRAM.randomSalt(), iterations: 4096, algorithm: mechanism.scramAlgorithm!)
        var client = SCRAMClientExchange(
            mechanism: mechanism, user: "a,b=c", password: "s3cret", channelBinding: binding,
            tlsActive: true, serverOffersPlus: true
        )
        var server = SCRAMServerExchange(mechanism: mechanism, channelBinding: binding, plusOffered: true)
        #expect(try server.receiveClientFirst(client.clientFirst()) == "a,b=c")
        let final = try client.receiveServerFirst(server.serverFirst(keys: keys))
        try client.receiveServerFinal(server.receiveClientFinal(final))
    }

    private func serverAfterFirst(
        _ mechanism: SASLMechanism = .scramSHA256Plus,
        binding: ChannelBinding? = ChannelBinding(kind: .tlsServerEndPoint, data: [1, 2, 3]),
        clientBinding: ChannelBinding? = ChannelBinding(kind: .tlsServerEndPoint, data: [1, 2, 3]),
        password: String = "s3cret"
    ) throws -> (SCRAMServerExchange, SCRAMClientExchange, [UInt8]) {
        let keys = SCRAMKeys.derive(password: "s3cret", salt: [9, 9, 9, 9], iterations: 4096, algorithm: .sha256)
        var client = SCRAMClientExchange(
            mechanism: mechanism, user: "alice", password: password, channelBinding: clientBinding,
            tlsActive: true, serverOffersPlus: true
        )
        var server = SCRAMServerExchange(mechanism: mechanism, channelBinding: binding, plusOffered: true)
        _ = try server.receiveClientFirst(client.clientFirst())
        let final = try client.receiveServerFirst(server.serverFirst(keys: keys))
        return (server, client, final)
    }

    @Test func wrongPasswordFails() throws {
        var (server, _, final) = try self.serverAfterFirst(password: "wrong")
        #expect(throws: SCRAMServerFailure.wrongProof) { try server.receiveClientFinal(final) }
    }

    /// The client bound to another channel (a man in the middle terminating TLS holds another certificate).
    @Test func bindingMismatchFails() throws {
        var (server, _, final) = try self.serverAfterFirst(clientBinding: ChannelBinding(kind: .tlsServerEndPoint, data: [6, 6, 6]))
        #expect(throws: SCRAMServerFailure.channelBindingMismatch) { try server.receiveClientFinal(final) }
    }

    @Test func clientFirstChecks() throws {
        func first(_ mechanism: SASLMechanism, _ message: String, binding: ChannelBinding? = ChannelBinding(kind: .tlsServerEndPoint, data: [1]), plusOffered: Bool = true) throws(SCRAMServerFailure) -> String {
            var server = SCRAMServerExchange(mechanism: mechanism, channelBinding: binding, plusOffered: plusOffered)
            return try server.receiveClientFirst(bytes(message))
        }
        // -PLUS without TLS (no binding), -PLUS without p=, p= on the plain mechanism, an unsupported binding.
        #expect(throws: SCRAMServerFailure.channelBindingMismatch) { try first(.scramSHA256Plus, "p=tls-server-end-point,,n=u,r=abc", binding: nil) }
        #expect(throws: SCRAMServerFailure.channelBindingMismatch) { try first(.scramSHA256Plus, "n,,n=u,r=abc") }
        #expect(throws: SCRAMServerFailure.channelBindingMismatch) { try first(.scramSHA256, "p=tls-server-end-point,,n=u,r=abc") }
        #expect(throws: SCRAMServerFailure.channelBindingMismatch) { try first(.scramSHA256Plus, "p=tls-exporter,,n=u,r=abc") }
        // "y" while -PLUS is offered on this TLS connection: a downgrade.
        #expect(throws: SCRAMServerFailure.downgradeDetected) { try first(.scramSHA256, "y,,n=u,r=abc") }
        #expect(try first(.scramSHA256, "y,,n=u,r=abc", plusOffered: false) == "u")
        #expect(try first(.scramSHA256, "y,,n=u,r=abc", binding: nil) == "u")
        // Mandatory extension, authzid of someone else, malformed names and nonces.
        #expect(throws: SCRAMServerFailure.unsupportedExtension) { try first(.scramSHA256, "n,,m=x,n=u,r=abc") }
        #expect(throws: SCRAMServerFailure.authorizationIdentityDiffers) { try first(.scramSHA256, "n,a=admin,n=u,r=abc") }
        #expect(try first(.scramSHA256, "n,a=u,n=u,r=abc") == "u")
        #expect(throws: SCRAMServerFailure.malformedClientFirst) { try first(.scramSHA256, "n,,n=u=2X,r=abc") }
        #expect(throws: SCRAMServerFailure.malformedClientFirst) { try first(.scramSHA256, "n,,n=u") }
        #expect(throws: SCRAMServerFailure.malformedClientFirst) { try first(.scramSHA256, "n,,r=abc,n=u") }
        #expect(throws: SCRAMServerFailure.malformedClientFirst) { try first(.scramSHA256, "x,,n=u,r=abc") }
        #expect(throws: SCRAMServerFailure.malformedClientFirst) { try first(.scramSHA256, "") }
        #expect(try first(.scramSHA256, "n,,n=a=2Cb=3Dc,r=abc") == "a,b=c")
    }

    @Test func serverFirstChecks() throws {
        func client() -> SCRAMClientExchange {
            var client = SCRAMClientExchange(
                mechanism: .scramSHA256, user: "u", password: "p", channelBinding: nil,
                tlsActive: true, serverOffersPlus: false, clientNonce: "abc"
            )
            _ = client.clientFirst()
            return client
        }
        var c = client()
        // The server's nonce must extend ours.
        #expect(throws: SCRAMClientError.nonceMismatch) { try c.receiveServerFirst(bytes("r=xyz123,s=AAAA,i=4096")) }
        #expect(throws: SCRAMClientError.nonceMismatch) { try c.receiveServerFirst(bytes("r=abc,s=AAAA,i=4096")) }
        // Iteration counts of 0 and 10⁹ are refused before any work.
        #expect(throws: SCRAMClientError.iterationCountOutOfRange(0)) { try c.receiveServerFirst(bytes("r=abcdef,s=AAAA,i=0")) }
        #expect(throws: SCRAMClientError.iterationCountOutOfRange(1_000_000_000)) { try c.receiveServerFirst(bytes("r=abcdef,s=AAAA,i=1000000000")) }
        #expect(throws: SCRAMClientError.iterationCountOutOfRange(Int.max)) { try c.receiveServerFirst(bytes("r=abcdef,s=AAAA,i=99999999999999999999999")) }
        #expect(throws: SCRAMClientError.malformedServerFirst) { try c.receiveServerFirst(bytes("r=abcdef,s=,i=4096")) }
        #expect(throws: SCRAMClientError.malformedServerFirst) { try c.receiveServerFirst(bytes("r=abcdef,s=AAAA,i=-1")) }
        #expect(throws: SCRAMClientError.unsupportedExtension) { try c.receiveServerFirst(bytes("m=x,r=abcdef,s=AAAA,i=4096")) }
        // "y" only when TLS is up and the server offers no -PLUS.
        var y = client()
        #expect(text(y.clientFirst()).hasPrefix("y,,"))
        var n = SCRAMClientExchange(mechanism: .scramSHA256, user: "u", password: "p", channelBinding: nil, tlsActive: true, serverOffersPlus: true)
        #expect(text(n.clientFirst()).hasPrefix("n,,"))
        // e= from the server is reported, sanitised.
        _ = try c.receiveServerFirst(bytes("r=abcdef,s=AAAA,i=4096"))
        #expect(throws: SCRAMClientError.serverError("invalid-proof")) { try c.receiveServerFinal(bytes("e=invalid-proof")) }
        #expect(throws: SCRAMClientError.malformedServerFinal) { try c.receiveServerFinal(bytes("x")) }
    }

    @Test func dummyKeysAreStablePerUserAndMatchNothing() {
        let secret: [UInt8] = Array(repeating: 1, count: 32)
        let a = SCRAMServerExchange.dummyKeys(user: "ghost", algorithm: .sha256, iterations: 4096, secret: secret)
        #expect(a == SCRAMServerExchange.dummyKeys(user: "ghost", algorithm: .sha256, iterations: 4096, secret: secret))
        #expect(a.salt != SCRAMServerExchange.dummyKeys(user: "other", algorithm: .sha256, iterations: 4096, secret: secret).salt)
        #expect(!a.matches(password: ""))
    }

    @Test func serverEndPointHashFollowsTheSignatureAlgorithm() throws {
        // Not a certificate: no binding.
        #expect(ChannelBinding.tlsServerEndPoint(certificateDER: [1, 2, 3]) == nil)
    }
}
