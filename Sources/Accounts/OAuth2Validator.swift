import Foundation
import JWTKit
import Logging
import Synchronization
import SystemIO

/// The resource-server settings of `auth.oauth2`.
public struct OAuth2Settings: Sendable, Equatable {
    /// A JWKS file (re-read by `reload()`, on SIGHUP).
    public var jwksPath: String
    /// `iss` must be exactly this.
    public var issuer: String
    /// `aud` (a string or a list) must contain this.
    public var audience: String
    /// The claim that names the user (default `email`); the user must exist in the passwd-file.
    public var usernameClaim: String
    /// Seconds of clock difference allowed for `exp` and `nbf`.
    public var clockSkew: Int

    public static let defaultClockSkew = 60

    public init(jwksPath: String, issuer: String, audience: String, usernameClaim: String = "email", clockSkew: Int = Self.defaultClockSkew) {
        self.jwksPath = jwksPath
        self.issuer = issuer
        self.audience = audience
        self.usernameClaim = usernameClaim
        self.clockSkew = clockSkew
    }
}

/// Why a JWKS cannot be used. Names the file, never a key.
public struct OAuth2KeySetError: Error, Sendable, Equatable, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "JWKS \(self.path): \(self.reason)" }
}

/// Why a bearer token was refused. For the log only: the client always gets the same answer. Never holds the token.
public enum OAuth2Failure: Error, Sendable, Equatable, CustomStringConvertible {
    case malformed
    /// The header names an algorithm other than RS256, ES256, EdDSA (`none`, HMAC, …).
    case algorithmNotAllowed(String)
    /// No `kid`, or one the key set does not hold.
    case unknownKey
    case badSignature
    case expired
    case notYetValid
    case wrongIssuer
    case wrongAudience
    case noUsername

    public var description: String {
        switch self {
        case .malformed: "malformed token"
        case .algorithmNotAllowed(let alg): "algorithm \(alg.prefix(20)) not allowed"
        case .unknownKey: "no key with the token's kid"
        case .badSignature: "signature does not verify"
        case .expired: "token expired"
        case .notYetValid: "token not yet valid (nbf)"
        case .wrongIssuer: "wrong issuer"
        case .wrongAudience: "wrong audience"
        case .noUsername: "no user name claim"
        }
    }
}

/// Validates OAuth 2.0 bearer tokens that are JWTs, locally, with the issuer's public keys (RFC 7519, RFC 9068):
/// signature (RS256, ES256 or EdDSA only, by `kid`), `exp`, `nbf`, `iss`, `aud`, and the user name claim.
/// Opaque tokens (RFC 7662 introspection) are not supported.
public final class OAuth2Validator: Sendable {
    public let settings: OAuth2Settings
    public static let allowedAlgorithms: Set<String> = ["RS256", "ES256", "EdDSA"]
    private let keys: Mutex<KeySet>
    /// Seconds since the epoch (injected for tests).
    private let now: @Sendable () -> Double

    private struct KeySet: Sendable {
        let collection: JWTKeyCollection
        let identifiers: Set<String>
        /// Adding keys to jwt-kit's collection (an actor) is asynchronous; validation waits for it.
        let ready: Task<Void, any Error>
    }

    /// Reads and checks the JWKS now (synchronously: a bad file is a start-up error).
    public init(settings: OAuth2Settings, now: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) throws {
        self.settings = settings
        self.now = now
        self.keys = Mutex(try Self.load(settings.jwksPath))
    }

    /// Re-reads the JWKS file (SIGHUP); on failure the keys in use stay and the error is thrown.
    public func reload() throws {
        let fresh = try Self.load(self.settings.jwksPath)
        self.keys.withLock { $0 = fresh }
    }

    public var keyCount: Int { self.keys.withLock { $0.identifiers.count } }

    /// A JWKS is a few keys; a bigger file is not one.
    static let maximumKeySetSize = 1 << 20

    /// Reads and checks a JWKS: every key needs a `kid`, a public key type (RSA, EC, OKP) and, if it names one, an
    /// allowed algorithm. A set with an HMAC (`oct`) key, an `alg` of `none`/HS*, or private key material is refused
    /// as a whole, so that a token can never be checked with a shared secret or with nothing.
    private static func load(_ path: String) throws -> KeySet {
        let read = Result { () throws(FileSystemError) in try FileSystem.readFile(path, limit: Self.maximumKeySetSize) }
        let bytes: [UInt8]
        switch read {
        case .success(let contents?): bytes = contents
        case .success(nil): throw OAuth2KeySetError(path: path, reason: "no such file")
        case .failure(let error): throw OAuth2KeySetError(path: path, reason: "cannot read: \(error.reason)")
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any],
            let entries = object["keys"] as? [[String: Any]]
        else {
            throw OAuth2KeySetError(path: path, reason: "not a JSON Web Key Set ({\"keys\": [...]})")
        }
        guard !entries.isEmpty else { throw OAuth2KeySetError(path: path, reason: "no keys") }
        var identifiers = Set<String>()
        for (index, entry) in entries.enumerated() {
            guard let kid = entry["kid"] as? String, !kid.isEmpty else {
                throw OAuth2KeySetError(path: path, reason: "key \(index + 1) has no kid")
            }
            let kty = entry["kty"] as? String ?? ""
            guard ["RSA", "EC", "OKP"].contains(kty) else {
                throw OAuth2KeySetError(path: path, reason: "key \(kid): key type \"\(kty)\" refused (only RSA, EC, OKP public keys)")
            }
            if let alg = entry["alg"] as? String, !Self.allowedAlgorithms.contains(alg) {
                throw OAuth2KeySetError(path: path, reason: "key \(kid): algorithm \"\(alg)\" refused (only RS256, ES256, EdDSA)")
            }
            guard entry["d"] == nil else {
                throw OAuth2KeySetError(path: path, reason: "key \(kid) holds private key material; publish public keys only")
            }
            identifiers.insert(kid)
        }
        let jwks: JWKS
        do {
            jwks = try JSONDecoder().decode(JWKS.self, from: Data(bytes))
        } catch {
            throw OAuth2KeySetError(path: path, reason: "a key cannot be read: \(error)")
        }
        let collection = JWTKeyCollection()
        let ready = Task<Void, any Error> { _ = try await collection.add(jwks: jwks) }
        return KeySet(collection: collection, identifiers: identifiers, ready: ready)
    }

    /// The user a token names, after every check; the error says which check failed (for the log).
    public func validate(_ token: String) async -> Result<String, OAuth2Failure> {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerBytes = Self.base64URLDecode(parts[0]),
            let header = try? JSONSerialization.jsonObject(with: Data(headerBytes)) as? [String: Any]
        else { return .failure(.malformed) }
        let alg = header["alg"] as? String ?? ""
        guard Self.allowedAlgorithms.contains(alg) else { return .failure(.algorithmNotAllowed(alg)) }
        let keySet = self.keys.withLock { $0 }
        // jwt-kit falls back to a default key for an unknown kid; a token must name one of the set's keys.
        guard let kid = header["kid"] as? String, keySet.identifiers.contains(kid) else { return .failure(.unknownKey) }
        let claims: Claims
        do {
            try await keySet.ready.value
            claims = try await keySet.collection.verify(token, as: Claims.self)
        } catch {
            return .failure(.badSignature)
        }
        let now = self.now()
        let skew = Double(self.settings.clockSkew)
        guard let exp = claims.exp else { return .failure(.expired) }
        guard now < exp + skew else { return .failure(.expired) }
        if let nbf = claims.nbf, now + skew < nbf { return .failure(.notYetValid) }
        guard claims.iss == self.settings.issuer else { return .failure(.wrongIssuer) }
        guard claims.aud.contains(self.settings.audience) else { return .failure(.wrongAudience) }
        guard let name = claims.strings[self.settings.usernameClaim], !name.isEmpty else { return .failure(.noUsername) }
        return .success(name)
    }

    static func base64URLDecode(_ text: some StringProtocol) -> [UInt8]? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.utf8.count % 4 != 0 { base64 += "=" }
        return Data(base64Encoded: base64).map { Array($0) }
    }

    /// The claims the validator reads: times, issuer, audience (a string or a list), and every string claim (for the
    /// configurable user name claim). Signature checking is jwt-kit's; claim checks are the validator's (its clock).
    struct Claims: JWTPayload {
        var exp: Double?
        var nbf: Double?
        var iss: String?
        var aud: [String] = []
        var strings: [String: String] = [:]

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: Key.self)
            for key in container.allKeys {
                switch key.stringValue {
                case "exp": self.exp = try? container.decode(Double.self, forKey: key)
                case "nbf": self.nbf = try? container.decode(Double.self, forKey: key)
                case "aud":
                    if let one = try? container.decode(String.self, forKey: key) {
                        self.aud = [one]
                    } else {
                        self.aud = (try? container.decode([String].self, forKey: key)) ?? []
                    }
                default:
                    if let value = try? container.decode(String.self, forKey: key) { self.strings[key.stringValue] = value }
                }
            }
            self.iss = self.strings["iss"]
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Key.self)
            for (key, value) in self.strings { try container.encode(value, forKey: Key(stringValue: key)) }
        }

        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }
}
