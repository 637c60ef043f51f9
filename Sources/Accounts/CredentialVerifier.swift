/// Checks user names and passwords for the server (USER/PASS, SASL PLAIN).
public protocol CredentialVerifier: Sendable {
    /// Returns `.success` only for a known user with a matching password. An unknown user costs the same time as a
    /// wrong password (a dummy hash is verified), so callers cannot tell them apart.
    func authenticate(user: String, password: String) async throws -> AuthenticationResult
    /// The record of `user`, or `nil` (e.g. for `deliver`/LMTP, which need no password).
    func lookup(user: String) async throws -> UserRecord?
}

public enum AuthenticationResult: Sendable, Equatable {
    case success(UserRecord)
    case failure
}
