import Crypto
import Foundation
import Synchronization
import Testing

@testable import Accounts

/// JWT access tokens against a JWKS, with an injected clock; tokens are signed here with swift-crypto.
@Suite struct OAuth2ValidatorTests {
    static let now: Double = 1_800_000_000
    let key = P256.Signing.PrivateKey()
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("oauth2-\(UUID().uuidString)").path

    static func b64url(_ bytes: some Sequence<UInt8>) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    func jwks(extra: String = "") -> String {
        let raw = Array(self.key.publicKey.rawRepresentation)
        return #"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","x":"\#(Self.b64url(raw[0..<32]))","y":"\#(Self.b64url(raw[32..<64]))"}\#(extra)]}"#
    }

    func token(_ claims: [String: Any], header: [String: Any] = ["alg": "ES256", "kid": "k1"]) throws -> String {
        let head = Self.b64url(try JSONSerialization.data(withJSONObject: header))
        let body = Self.b64url(try JSONSerialization.data(withJSONObject: claims))
        let signature = try self.key.signature(for: Data("\(head).\(body)".utf8)).rawRepresentation
        return "\(head).\(body).\(Self.b64url(signature))"
    }

    nonisolated(unsafe) static let good: [String: Any] = [
        "iss": "https://idp.test/realms/mail", "aud": ["pop3", "account"], "email": "carol@example.com",
        "exp": now + 300, "nbf": now - 10,
    ]

    func validator(jwks: String? = nil, now: Double = Self.now) throws -> OAuth2Validator {
        try FileManager.default.createDirectory(atPath: self.folder, withIntermediateDirectories: true)
        let path = self.folder + "/jwks.json"
        try (jwks ?? self.jwks()).write(toFile: path, atomically: true, encoding: .utf8)
        return try OAuth2Validator(
            settings: OAuth2Settings(jwksPath: path, issuer: "https://idp.test/realms/mail", audience: "pop3"),
            now: { now }
        )
    }

    @Test func validTokenNamesTheUser() async throws {
        let validator = try self.validator()
        #expect(await validator.validate(try self.token(Self.good)) == .success("carol@example.com"))
        // aud as a single string.
        var single = Self.good
        single["aud"] = "pop3"
        #expect(await validator.validate(try self.token(single)) == .success("carol@example.com"))
    }

    @Test func timeClaimsWithClockSkew() async throws {
        var claims = Self.good
        claims["exp"] = Self.now - 59  // within the 60 s skew
        #expect(await (try self.validator()).validate(try self.token(claims)) == .success("carol@example.com"))
        claims["exp"] = Self.now - 61
        #expect(await (try self.validator()).validate(try self.token(claims)) == .failure(.expired))
        claims = Self.good
        claims["nbf"] = Self.now + 120
        #expect(await (try self.validator()).validate(try self.token(claims)) == .failure(.notYetValid))
        claims.removeValue(forKey: "nbf")
        claims.removeValue(forKey: "exp")
        #expect(await (try self.validator()).validate(try self.token(claims)) == .failure(.expired))
    }

    @Test func issuerAudienceAndUserClaims() async throws {
        let validator = try self.validator()
        var claims = Self.good
        claims["iss"] = "https://idp.test/realms/other"
        #expect(await validator.validate(try self.token(claims)) == .failure(.wrongIssuer))
        claims = Self.good
        claims["aud"] = ["imap"]
        #expect(await validator.validate(try self.token(claims)) == .failure(.wrongAudience))
        claims = Self.good
        claims.removeValue(forKey: "email")
        #expect(await validator.validate(try self.token(claims)) == .failure(.noUsername))
    }

    @Test func headerChecksComeBeforeTheSignature() async throws {
        let validator = try self.validator()
        #expect(await validator.validate(try self.token(Self.good, header: ["alg": "none", "kid": "k1"])) == .failure(.algorithmNotAllowed("none")))
        #expect(await validator.validate(try self.token(Self.good, header: ["alg": "HS256", "kid": "k1"])) == .failure(.algorithmNotAllowed("HS256")))
        #expect(await validator.validate(try self.token(Self.good, header: ["alg": "ES256", "kid": "k2"])) == .failure(.unknownKey))
        #expect(await validator.validate(try self.token(Self.good, header: ["alg": "ES256"])) == .failure(.unknownKey))
        #expect(await validator.validate("not.a.jwt") == .failure(.malformed))
        #expect(await validator.validate("") == .failure(.malformed))
        // Signed by another key with the same kid.
        let other = OAuth2ValidatorTests()
        #expect(await validator.validate(try other.token(Self.good)) == .failure(.badSignature))
    }

    @Test func dangerousKeySetsAreRefused() throws {
        for (extra, needle) in [
            (#",{"kty":"oct","kid":"h","k":"c2VjcmV0"}"#, "key type"),
            (#",{"kty":"RSA","kid":"r","alg":"none","n":"AQAB","e":"AQAB"}"#, "algorithm"),
            (#",{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}"#, "no kid"),
        ] {
            #expect(throws: OAuth2KeySetError.self) { _ = try self.validator(jwks: self.jwks(extra: extra)) }
            do {
                _ = try self.validator(jwks: self.jwks(extra: extra))
            } catch {
                #expect("\(error)".contains(needle), "\(error)")
            }
        }
        #expect(throws: OAuth2KeySetError.self) { _ = try self.validator(jwks: #"{"keys":[]}"#) }
        #expect(throws: OAuth2KeySetError.self) { _ = try self.validator(jwks: "[]") }
    }

    /// Keycloak publishes an RSA-OAEP encryption key beside its signing keys: it is left out, not fatal.
    @Test func encryptionKeysAndOtherCurvesAreLeftOut() async throws {
        let extra = #",{"kty":"RSA","kid":"enc1","use":"enc","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"},{"kty":"OKP","kid":"x1","crv":"X25519","x":"AAAA"},{"kty":"EC","kid":"p384","crv":"P-384","x":"AA","y":"AA"}"#
        let validator = try self.validator(jwks: self.jwks(extra: extra))
        #expect(validator.keyCount == 1 && Set(validator.skippedKeys) == ["enc1", "x1", "p384"])
        #expect(await validator.validate(try self.token(Self.good)) == .success("carol@example.com"))
        #expect(await validator.validate(try self.token(Self.good, header: ["alg": "RS256", "kid": "enc1"])) == .failure(.unknownKey))
        // Only encryption keys: nothing to verify with.
        #expect(throws: OAuth2KeySetError.self) {
            _ = try self.validator(jwks: #"{"keys":[{"kty":"RSA","kid":"enc1","use":"enc","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"}]}"#)
        }
    }

    @Test func idTokensAndUnverifiedAddressesAreRefused() async throws {
        let validator = try self.validator()
        var claims = Self.good
        claims["typ"] = "ID"
        #expect(await validator.validate(try self.token(claims)) == .failure(.notAnAccessToken))
        claims = Self.good
        claims["email_verified"] = false
        #expect(await validator.validate(try self.token(claims)) == .failure(.emailNotVerified))
        claims["email_verified"] = true
        claims["typ"] = "Bearer"
        #expect(await validator.validate(try self.token(claims)) == .success("carol@example.com"))
    }

    /// A JWKS URL is fetched at the first token, and again for an unknown kid, but at most once per 30 s.
    @Test func jwksURLIsRefetchedForAnUnknownKidAtMostEvery30Seconds() async throws {
        final class FakeHTTP: OAuth2HTTP {
            let body: Mutex<String>
            let fetches = Mutex(0)
            init(_ body: String) { self.body = Mutex(body) }
            func get(_ url: String) async throws -> (status: Int, body: [UInt8]) {
                self.fetches.withLock { $0 += 1 }
                return (200, Array(self.body.withLock { $0 }.utf8))
            }
            func post(_ url: String, form: [(String, String)], user: String, password: String) async throws -> (status: Int, body: [UInt8]) {
                (404, [])
            }
        }
        let first = OAuth2ValidatorTests()
        let http = FakeHTTP(first.jwks())
        let clock = Mutex(Self.now)
        let validator = try OAuth2Validator(
            settings: OAuth2Settings(jwksPath: "https://idp.test/certs", issuer: "https://idp.test/realms/mail", audience: "pop3"),
            http: http,
            now: { clock.withLock { $0 } }
        )
        #expect(await validator.validate(try first.token(Self.good)) == .success("carol@example.com"))
        #expect(http.fetches.withLock { $0 } == 1)
        // The issuer rotates to a new key with a new kid.
        let second = OAuth2ValidatorTests()
        http.body.withLock { $0 = second.jwks().replacingOccurrences(of: "\"k1\"", with: "\"k2\"") }
        let rotated = try second.token(Self.good, header: ["alg": "ES256", "kid": "k2"])
        clock.withLock { $0 += 10 }
        #expect(await validator.validate(rotated) == .failure(.unknownKey))
        #expect(http.fetches.withLock { $0 } == 1, "fetched again within 30 s")
        clock.withLock { $0 += 25 }
        #expect(await validator.validate(rotated) == .success("carol@example.com"))
        #expect(http.fetches.withLock { $0 } == 2)
    }
}
