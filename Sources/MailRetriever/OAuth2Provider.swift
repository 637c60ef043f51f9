import Foundation
import POP3Client
import SASL
import SystemIO

/// Where an account's OAuth 2.0 tokens come from: a provider preset or a custom authorization server, the client
/// registration, and the flow `pop3 oauth2 login` runs.
public struct OAuth2Provider: Sendable, Equatable {
    public enum Flow: String, Sendable, Equatable {
        /// RFC 8628: the user opens a URL on any device and types a code.
        case device
        /// RFC 6749 §4.1 with PKCE (RFC 7636), redirected to a listener on 127.0.0.1 (RFC 8252 §7.3).
        case authorizationCode = "authorization-code"
    }

    public var name: String
    public var tokenEndpoint: String
    public var deviceEndpoint: String?
    public var authorizationEndpoint: String?
    public var scope: String
    public var clientID: String
    /// Google's "installed app" clients have a secret (not secret in any real sense, RFC 8252 §8.5); from a 0600 file.
    public var clientSecret: String?
    public var flow: Flow

    public init(
        name: String,
        tokenEndpoint: String,
        deviceEndpoint: String? = nil,
        authorizationEndpoint: String? = nil,
        scope: String,
        clientID: String,
        clientSecret: String? = nil,
        flow: Flow
    ) {
        self.name = name
        self.tokenEndpoint = tokenEndpoint
        self.deviceEndpoint = deviceEndpoint
        self.authorizationEndpoint = authorizationEndpoint
        self.scope = scope
        self.clientID = clientID
        self.clientSecret = clientSecret
        self.flow = flow
    }

    /// Microsoft 365 / Outlook.com: device flow, the POP scope, XOAUTH2 on outlook.office365.com.
    public static func microsoft(clientID: String, clientSecret: String? = nil, tenant: String = "common") -> OAuth2Provider {
        OAuth2Provider(
            name: "microsoft",
            tokenEndpoint: "https://login.microsoftonline.com/\(tenant)/oauth2/v2.0/token",
            deviceEndpoint: "https://login.microsoftonline.com/\(tenant)/oauth2/v2.0/devicecode",
            scope: "https://outlook.office.com/POP.AccessAsUser.All offline_access",
            clientID: clientID,
            clientSecret: clientSecret,
            flow: .device
        )
    }

    /// Google: the mail scope is not allowed in Google's device flow, so the authorization-code flow with PKCE on a
    /// loopback redirect.
    public static func google(clientID: String, clientSecret: String?) -> OAuth2Provider {
        OAuth2Provider(
            name: "google",
            tokenEndpoint: "https://oauth2.googleapis.com/token",
            authorizationEndpoint: "https://accounts.google.com/o/oauth2/v2/auth",
            scope: "https://mail.google.com/",
            clientID: clientID,
            clientSecret: clientSecret,
            flow: .authorizationCode
        )
    }

    /// The mechanism the provider's servers speak.
    public var defaultMechanism: AuthenticationMethod { self.name == "custom" ? .oauthBearer : .xoauth2 }

    /// Endpoints must be https, except on loopback (a local authorization server, tests).
    public static func checkEndpoint(_ url: String) -> String? { OAuth2URL.problem(url) }
}

/// The tokens of one account, kept in `$XDG_STATE_HOME/pop3/oauth2/ACCOUNT.json` (mode 0600, replaced atomically).
public struct OAuth2Tokens: Sendable, Equatable, Codable {
    public var refreshToken: String?
    public var accessToken: String?
    /// Unix seconds.
    public var expiresAt: Int64?

    public init(refreshToken: String?, accessToken: String?, expiresAt: Int64?) {
        self.refreshToken = refreshToken
        self.accessToken = accessToken
        self.expiresAt = expiresAt
    }

    enum CodingKeys: String, CodingKey {
        case refreshToken = "refresh_token"
        case accessToken = "access_token"
        case expiresAt = "expires_at"
    }

    /// The access token if it stays valid for at least `margin` seconds more.
    public func usableAccessToken(now: Int64, margin: Int64 = 60) -> String? {
        guard let token = self.accessToken, let expiresAt = self.expiresAt, expiresAt - margin > now else { return nil }
        return token
    }

    public static func path(for key: AccountKey, stateDirectory: String) -> String {
        FileSystem.join(FileSystem.join(stateDirectory, "oauth2"), key.fileStem + ".json")
    }

    public static func load(_ key: AccountKey, stateDirectory: String) throws -> OAuth2Tokens? {
        let path = Self.path(for: key, stateDirectory: stateDirectory)
        guard let bytes = try FileSystem.readFile(path, limit: 1 << 20) else { return nil }
        do {
            return try JSONDecoder().decode(OAuth2Tokens.self, from: Data(bytes))
        } catch {
            throw OAuth2Error.tokenStore("\(path) is not a token file (\(error)); run pop3 oauth2 login again")
        }
    }

    public func save(_ key: AccountKey, stateDirectory: String) throws {
        let folder = FileSystem.join(stateDirectory, "oauth2")
        try FileSystem.makeDirectories(folder, mode: 0o700)
        let bytes = Array(try JSONEncoder().encode(self))
        try FileSystem.atomicReplace(Self.path(for: key, stateDirectory: stateDirectory), with: bytes, mode: 0o600)
    }
}

/// OAuth 2.0 failures, in words for the user. Never holds a token.
public enum OAuth2Error: Error, Sendable, Equatable, CustomStringConvertible {
    case notLoggedIn(account: String)
    /// The refresh token was refused (`invalid_grant`): revoked, expired, or the password changed.
    case refreshRefused(account: String, reason: String)
    case denied(String)
    case expired
    case server(String)
    case tokenStore(String)
    case http(String)

    public var description: String {
        switch self {
        case .notLoggedIn(let account): "no OAuth 2.0 tokens for \(account): run `pop3 oauth2 login \(account)` first"
        case .refreshRefused(let account, let reason):
            "the authorization server refused the refresh token (\(reason)): it was revoked or has expired; run `pop3 oauth2 login \(account)` again"
        case .denied(let reason): "authorization denied (\(reason))"
        case .expired: "the code expired before it was entered; run the login again"
        case .server(let reason): "authorization server error: \(reason)"
        case .tokenStore(let reason): "token store: \(reason)"
        case .http(let reason): "cannot reach the authorization server: \(reason)"
        }
    }
}
