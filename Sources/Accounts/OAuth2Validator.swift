import Foundation
import JWTKit
import Logging
import Synchronization
import SystemIO

/// The resource-server settings of `auth.oauth2`.
public struct OAuth2Settings: Sendable, Equatable {
    /// A JWKS file (re-read by `reload()`, on SIGHUP) or an https URL (fetched at start, on SIGHUP, and when a token
    /// names a `kid` the set does not hold, at most once per `OAuth2Validator.refetchInterval`).
    public var jwksPath: String
    /// `iss` must be exactly this.
    public var issuer: String
    /// `aud` (a string or a list) must contain this.
    public var audience: String
    /// The claim that names the user (default `email`); the user must exist in the passwd-file.
    public var usernameClaim: String
    /// Seconds of clock difference allowed for `exp` and `nbf`.
    public var clockSkew: Int

    /// RFC 7662 token introspection for tokens that are not JWTs.
    public var introspection: OAuth2Introspection?

    public static let defaultClockSkew = 60

    public var jwksIsURL: Bool { Self.isURL(self.jwksPath) }

    public static func isURL(_ text: String) -> Bool {
        let lowered = text.lowercased()
        return lowered.hasPrefix("https://") || lowered.hasPrefix("http://")
    }

    public init(
        jwksPath: String,
        issuer: String,
        audience: String,
        usernameClaim: String = "email",
        clockSkew: Int = Self.defaultClockSkew,
        introspection: OAuth2Introspection? = nil
    ) {
        self.introspection = introspection
        self.jwksPath = jwksPath
        self.issuer = issuer
        self.audience = audience
        self.usernameClaim = usernameClaim
        self.clockSkew = clockSkew
    }
}

/// An RFC 7662 introspection endpoint and the resource server's client credentials for it.
public struct OAuth2Introspection: Sendable, Equatable, CustomStringConvertible {
    public var url: String
    public var clientID: String
    public var clientSecret: String
    /// Where the credentials were read from (shown by check-config; the secret never is).
    public var credentialsFile: String

    public init(url: String, clientID: String, clientSecret: String, credentialsFile: String = "") {
        self.url = url
        self.credentialsFile = credentialsFile
        self.clientID = clientID
        self.clientSecret = clientSecret
    }

    public var description: String { "OAuth2Introspection(\(self.url), client \(self.clientID), secret <redacted>)" }
}

/// The HTTP the validator needs (JWKS URLs, introspection), injected by the server so that Accounts has no HTTP
/// client of its own. Replies are bounded by the implementation.
public protocol OAuth2HTTP: Sendable {
    func get(_ url: String) async throws -> (status: Int, body: [UInt8])
    /// A form POST with HTTP Basic authentication.
    func post(_ url: String, form: [(String, String)], user: String, password: String) async throws -> (status: Int, body: [UInt8])
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
    /// Introspection said the token is not active, or could not be asked.
    case inactive
    case introspectionFailed(String)
    case notAnAccessToken
    case emailNotVerified

    public var description: String {
        switch self {
        case .malformed: "malformed token"
        case .algorithmNotAllowed(let alg): "algorithm \(String(reflecting: String(alg.prefix(20)))) not allowed"
        case .unknownKey: "no key with the token's kid"
        case .badSignature: "signature does not verify"
        case .expired: "token expired"
        case .notYetValid: "token not yet valid (nbf)"
        case .wrongIssuer: "wrong issuer"
        case .wrongAudience: "wrong audience"
        case .noUsername: "no user name claim"
        case .inactive: "introspection: token not active"
        case .notAnAccessToken: "an ID token, not an access token"
        case .emailNotVerified: "email_verified is false"
        case .introspectionFailed(let why): "introspection failed: \(why)"
        }
    }
}

/// Validates OAuth 2.0 bearer tokens. JWTs locally, with the issuer's public keys (RFC 7519, RFC 9068): signature
/// (RS256, ES256 or EdDSA only, by `kid`), `exp`, `nbf`, `iss`, `aud`, and the user name claim. Other (opaque) tokens
/// through RFC 7662 introspection when it is configured, with the same claim checks on its answer.
public final class OAuth2Validator: Sendable {
    public let settings: OAuth2Settings
    public static let allowedAlgorithms: Set<String> = ["RS256", "ES256", "EdDSA"]
    /// How often at most a JWKS URL is fetched again for a token with an unknown `kid`.
    public static let refetchInterval: Double = 30
    private let keys: Mutex<KeySet?>
    private let lastFetch: Mutex<Double?>
    private let http: (any OAuth2HTTP)?
    private let logger: Logger
    /// Seconds since the epoch (injected for tests).
    private let now: @Sendable () -> Double

    private struct KeySet: Sendable {
        let collection: JWTKeyCollection
        let identifiers: Set<String>
        /// Adding keys to jwt-kit's collection (an actor) is asynchronous; validation waits for it.
        let ready: Task<Void, any Error>
        /// Kids left out: encryption keys, other algorithms or curves.
        let skipped: [String]
    }

    /// Reads and checks a JWKS file now (synchronously: a bad file is a start-up error); a JWKS URL is fetched by
    /// `refresh()` (the daemon calls it at start) or at the first token. `http` is required for a URL and for
    /// introspection.
    public init(
        settings: OAuth2Settings,
        http: (any OAuth2HTTP)? = nil,
        logger: Logger = Logger(label: "oauth2"),
        now: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }
    ) throws {
        self.settings = settings
        self.now = now
        self.http = http
        self.logger = logger
        self.lastFetch = Mutex(nil)
        if settings.jwksIsURL {
            guard http != nil else { throw OAuth2KeySetError(path: settings.jwksPath, reason: "a JWKS URL needs an HTTP client") }
            self.keys = Mutex(nil)
        } else {
            self.keys = Mutex(try Self.load(settings.jwksPath))
        }
    }

    /// Re-reads the JWKS file (SIGHUP); on failure the keys in use stay and the error is thrown. For a URL, use
    /// `refresh()`.
    public func reload() throws {
        guard !self.settings.jwksIsURL else { return }
        let fresh = try Self.load(self.settings.jwksPath)
        self.keys.withLock { $0 = fresh }
    }

    /// Fetches a JWKS URL now; on failure the keys in use stay and the error is thrown. Re-reads a file.
    public func refresh() async throws {
        guard self.settings.jwksIsURL, let http = self.http else { return try self.reload() }
        let url = self.settings.jwksPath
        self.lastFetch.withLock { $0 = self.now() }
        let reply: (status: Int, body: [UInt8])
        do {
            reply = try await http.get(url)
        } catch {
            throw OAuth2KeySetError(path: url, reason: "cannot fetch: \(error)")
        }
        guard reply.status == 200 else { throw OAuth2KeySetError(path: url, reason: "HTTP \(reply.status)") }
        let fresh = try Self.parse(reply.body, source: url)
        self.keys.withLock { $0 = fresh }
    }

    public var keyCount: Int { self.keys.withLock { $0?.identifiers.count ?? 0 } }

    /// Kids of the key set that are not used (encryption keys, other algorithms), for the log.
    public var skippedKeys: [String] { self.keys.withLock { $0?.skipped ?? [] } }

    /// A JWKS is a few keys; a bigger file is not one.
    static let maximumKeySetSize = 1 << 20

    /// Reads and checks a JWKS: every key needs a `kid`, a public key type (RSA, EC, OKP) and, if it names one, an
    /// allowed algorithm. A set with an HMAC (`oct`) key, an `alg` of `none`/HS*, or private key material is refused
    /// as a whole, so that a token can never be checked with a shared secret or with nothing.
    private static func load(_ path: String) throws -> KeySet {
        let read = Result { () throws(FileSystemError) in try FileSystem.readFile(path, limit: Self.maximumKeySetSize) }
        switch read {
        case .success(let contents?): return try Self.parse(contents, source: path)
        case .success(nil): throw OAuth2KeySetError(path: path, reason: "no such file")
        case .failure(let error): throw OAuth2KeySetError(path: path, reason: "cannot read: \(error.reason)")
        }
    }

    private static func parse(_ bytes: [UInt8], source path: String) throws -> KeySet {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any],
            let entries = object["keys"] as? [[String: Any]]
        else {
            throw OAuth2KeySetError(path: path, reason: "not a JSON Web Key Set ({\"keys\": [...]})")
        }
        var identifiers = Set<String>()
        var kept: [[String: Any]] = []
        var skipped: [String] = []
        for (index, entry) in entries.enumerated() {
            guard let kid = entry["kid"] as? String, !kid.isEmpty else {
                throw OAuth2KeySetError(path: path, reason: "key \(index + 1) has no kid")
            }
            let kty = entry["kty"] as? String ?? ""
            guard ["RSA", "EC", "OKP"].contains(kty) else {
                throw OAuth2KeySetError(path: path, reason: "key \(kid): key type \"\(kty)\" refused (only RSA, EC, OKP public keys)")
            }
            guard entry["d"] == nil else {
                throw OAuth2KeySetError(path: path, reason: "key \(kid) holds private key material; publish public keys only")
            }
            let alg = entry["alg"] as? String
            if let alg, alg == "none" || alg.uppercased().hasPrefix("HS") {
                throw OAuth2KeySetError(path: path, reason: "key \(kid): algorithm \"\(alg)\" refused (only RS256, ES256, EdDSA)")
            }
            // Encryption keys (Keycloak publishes an RSA-OAEP one beside its signing keys) and signing algorithms
            // other than ours are left out, not fatal; so are curves the allowed algorithms do not use.
            let curve = entry["crv"] as? String
            let usable =
                (entry["use"] as? String ?? "sig") == "sig"
                && (alg.map(Self.allowedAlgorithms.contains) ?? true)
                && (kty != "EC" || curve == "P-256") && (kty != "OKP" || curve == "Ed25519")
            guard usable else {
                skipped.append(kid)
                continue
            }
            identifiers.insert(kid)
            kept.append(entry)
        }
        guard !kept.isEmpty else {
            throw OAuth2KeySetError(path: path, reason: "no signing key for RS256, ES256 or EdDSA" + (skipped.isEmpty ? "" : " (left out: \(skipped.joined(separator: ", ")))"))
        }
        let jwks: JWKS
        do {
            jwks = try JSONDecoder().decode(JWKS.self, from: try JSONSerialization.data(withJSONObject: ["keys": kept]))
        } catch {
            throw OAuth2KeySetError(path: path, reason: "a key cannot be read: \(error)")
        }
        let collection = JWTKeyCollection()
        let ready = Task<Void, any Error> { _ = try await collection.add(jwks: jwks) }
        return KeySet(collection: collection, identifiers: identifiers, ready: ready, skipped: skipped)
    }

    /// The user a token names, after every check; the error says which check failed (for the log).
    public func validate(_ token: String) async -> Result<String, OAuth2Failure> {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerBytes = Self.base64URLDecode(parts[0]),
            let header = try? JSONSerialization.jsonObject(with: Data(headerBytes)) as? [String: Any]
        else {
            // Not a JWT: an opaque token, for the introspection endpoint if there is one.
            guard let introspection = self.settings.introspection else { return .failure(.malformed) }
            return await self.introspect(token, introspection)
        }
        let alg = header["alg"] as? String ?? ""
        guard Self.allowedAlgorithms.contains(alg) else { return .failure(.algorithmNotAllowed(alg)) }
        // jwt-kit falls back to a default key for an unknown kid; a token must name one of the set's keys.
        guard let kid = header["kid"] as? String else { return .failure(.unknownKey) }
        guard let keySet = await self.keySet(holding: kid) else { return .failure(.unknownKey) }
        let claims: Claims
        do {
            try await keySet.ready.value
            claims = try await keySet.collection.verify(token, as: Claims.self)
        } catch {
            return .failure(.badSignature)
        }
        return self.check(claims)
    }

    /// The claim checks shared by JWTs and introspection answers.
    private func check(_ claims: Claims) -> Result<String, OAuth2Failure> {
        let now = self.now()
        let skew = Double(self.settings.clockSkew)
        guard let exp = claims.exp else { return .failure(.expired) }
        guard now < exp + skew else { return .failure(.expired) }
        if let nbf = claims.nbf, now + skew < nbf { return .failure(.notYetValid) }
        guard claims.iss == self.settings.issuer else { return .failure(.wrongIssuer) }
        guard claims.aud.contains(self.settings.audience) else { return .failure(.wrongAudience) }
        // An OpenID Connect ID token (Keycloak marks it typ "ID") is not an access token, whatever its audience.
        if let type = claims.strings["typ"], type.uppercased() == "ID" { return .failure(.notAnAccessToken) }
        guard let name = claims.strings[self.settings.usernameClaim], !name.isEmpty else { return .failure(.noUsername) }
        // An address the user typed in and the issuer has not verified names nobody.
        if self.settings.usernameClaim == "email", claims.emailVerified == false { return .failure(.emailNotVerified) }
        return .success(name)
    }

    /// The key set if it holds `kid`; for a JWKS URL, fetched first if there is none yet, or again for an unknown kid
    /// (keys rotate) at most once per `refetchInterval`.
    private func keySet(holding kid: String) async -> KeySet? {
        if let current = self.keys.withLock({ $0 }), current.identifiers.contains(kid) { return current }
        guard self.settings.jwksIsURL else { return nil }
        let now = self.now()
        let due = self.lastFetch.withLock { last in last.map { now - $0 >= Self.refetchInterval } ?? true }
        guard due else { return nil }
        do {
            try await self.refresh()
            self.logger.notice("JWKS fetched", metadata: ["url": "\(self.settings.jwksPath)", "keys": "\(self.keyCount)"])
        } catch {
            self.logger.error("JWKS fetch failed; keeping the keys in use", metadata: ["error": "\(error)"])
        }
        guard let fresh = self.keys.withLock({ $0 }), fresh.identifiers.contains(kid) else { return nil }
        return fresh
    }

    /// RFC 7662: POSTs the token with the resource server's credentials; the answer must say `active: true`, and its
    /// `exp`, `iss`, `aud` and user name claim pass the same checks as a JWT's. The answer is never logged.
    private func introspect(_ token: String, _ introspection: OAuth2Introspection) async -> Result<String, OAuth2Failure> {
        guard let http = self.http else { return .failure(.introspectionFailed("no HTTP client")) }
        let reply: (status: Int, body: [UInt8])
        do {
            reply = try await http.post(
                introspection.url,
                form: [("token", token), ("token_type_hint", "access_token")],
                user: introspection.clientID,
                password: introspection.clientSecret
            )
        } catch {
            return .failure(.introspectionFailed("\(error)".prefix(200).description))
        }
        guard reply.status == 200 else { return .failure(.introspectionFailed("HTTP \(reply.status)")) }
        guard let claims = try? JSONDecoder().decode(Claims.self, from: Data(reply.body)) else {
            return .failure(.introspectionFailed("not a JSON object"))
        }
        guard claims.active == true else { return .failure(.inactive) }
        return self.check(claims)
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
        /// Introspection's `active`.
        var active: Bool?
        var emailVerified: Bool?

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
                case "active": self.active = try? container.decode(Bool.self, forKey: key)
                case "email_verified":
                    self.emailVerified = (try? container.decode(Bool.self, forKey: key)) ?? (try? container.decode(String.self, forKey: key)).map { $0 == "true" }
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
