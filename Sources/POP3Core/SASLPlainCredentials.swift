/// SASL PLAIN credentials.
/// - SeeAlso: [RFC 4616 §2](https://www.rfc-editor.org/rfc/rfc4616#section-2): `message = [authzid] UTF8NUL authcid UTF8NUL passwd`
public struct SASLPlainCredentials: Sendable, Equatable, CustomStringConvertible {
    public var authorizationID: String
    public var authenticationID: String
    public var password: String

    public init(authorizationID: String = "", authenticationID: String, password: String) {
        self.authorizationID = authorizationID
        self.authenticationID = authenticationID
        self.password = password
    }

    public enum DecodeError: Error, Sendable, Equatable { case badBase64, malformed }

    /// Decodes a client response line. `=` is an empty response (RFC 5034 §4).
    public static func decode(response: some StringProtocol) throws(DecodeError) -> Self {
        guard let bytes = response == "=" ? [] : Base64.decode(response) else { throw .badBase64 }
        let parts = bytes.split(separator: 0, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[1].isEmpty, !parts[2].isEmpty,
            let authz = String(validating: parts[0], as: UTF8.self),
            let authc = String(validating: parts[1], as: UTF8.self),
            let password = String(validating: parts[2], as: UTF8.self)
        else { throw .malformed }
        return Self(authorizationID: authz, authenticationID: authc, password: password)
    }

    /// The base64 client response for these credentials.
    public func encodedResponse() -> String {
        Base64.encode(Array(self.authorizationID.utf8) + [0] + Array(self.authenticationID.utf8) + [0] + Array(self.password.utf8))
    }

    public var description: String { "SASLPlainCredentials(authcid: \(self.authenticationID), password: <redacted>)" }
}
