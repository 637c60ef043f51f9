import Crypto
import Foundation
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
}
