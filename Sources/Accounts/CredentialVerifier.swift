import SASL

/// Checks user names and passwords for the server (USER/PASS, SASL PLAIN, SCRAM).
public protocol CredentialVerifier: Sendable {
    /// Returns `.success` only for a known user with a matching password. An unknown user costs the same time as a
    /// wrong password (a dummy hash is verified), so callers cannot tell them apart.
    func authenticate(user: String, password: String) async throws -> AuthenticationResult
    /// The record of `user`, or `nil` (e.g. for `deliver`/LMTP, which need no password).
    func lookup(user: String) async throws -> UserRecord?
    /// The SCRAM keys of `user` for `algorithm`. Always returns keys: for an unknown user, a locked account or a
    /// stored hash SCRAM cannot use, dummy keys no proof matches (with `record` nil), so the exchange runs the
    /// same way and fails like a wrong password.
    func scramKeys(user: String, algorithm: SCRAMAlgorithm) async throws -> SCRAMLookup
}

public struct SCRAMLookup: Sendable {
    /// The account, when its stored hash can do SCRAM.
    public let record: UserRecord?
    public let keys: SCRAMKeys

    public init(record: UserRecord?, keys: SCRAMKeys) {
        self.record = record
        self.keys = keys
    }
}

public enum AuthenticationResult: Sendable, Equatable {
    case success(UserRecord)
    case failure
}
