import POP3Core

/// Why a SCRAM exchange failed on the server. Every case gets the same reply on the wire (a failed login), so a
/// client learns nothing about which check it failed; the case is for the log. Never holds secrets.
public enum SCRAMServerFailure: Error, Sendable, Equatable, CustomStringConvertible {
    case malformedClientFirst
    case malformedClientFinal
    /// `m=` (reserved for mandatory extensions): refused (RFC 5802 §7).
    case unsupportedExtension
    /// An authorisation identity other than the user (no proxy logins).
    case authorizationIdentityDiffers
    /// `-PLUS` without `p=`, `p=` without `-PLUS`, or `p=` naming a binding this connection cannot give.
    case channelBindingMismatch
    /// `y` while this server offers `-PLUS` on this connection: someone removed it from the list (RFC 5802 §6).
    case downgradeDetected
    case nonceMismatch
    case wrongProof

    public var description: String {
        switch self {
        case .malformedClientFirst: "malformed client-first message"
        case .malformedClientFinal: "malformed client-final message"
        case .unsupportedExtension: "client asked for a mandatory extension"
        case .authorizationIdentityDiffers: "authorization identity differs from the user"
        case .channelBindingMismatch: "channel binding does not match"
        case .downgradeDetected: "client saw no -PLUS mechanism although the server offers one (downgrade)"
        case .nonceMismatch: "nonce does not match"
        case .wrongProof: "wrong password"
        }
    }
}

/// The server side of one SCRAM exchange (RFC 5802 §5), as a value: it takes the client's messages and returns the
/// server's. Looking up the user's keys happens between the two steps, outside (it may block).
public struct SCRAMServerExchange: Sendable {
    public let mechanism: SASLMechanism
    /// The binding of this connection (nil without TLS).
    let channelBinding: ChannelBinding?
    /// Whether this server offers a `-PLUS` mechanism on this connection (to detect `y` downgrades).
    let plusOffered: Bool
    private let serverNonce: String

    private var clientFirstBare = ""
    private var gs2Header = ""
    private var nonce = ""
    private var serverFirst = ""
    private var keys: SCRAMKeys?

    /// `serverNonce` is injectable for tests; `SCRAM.makeNonce()` otherwise.
    public init(mechanism: SASLMechanism, channelBinding: ChannelBinding?, plusOffered: Bool, serverNonce: String = SCRAM.makeNonce()) {
        precondition(mechanism.scramAlgorithm != nil, "not a SCRAM mechanism")
        self.mechanism = mechanism
        self.channelBinding = channelBinding
        self.plusOffered = plusOffered
        self.serverNonce = serverNonce
    }

    /// Step 1: the client-first message. Returns the user name it names (a decoded `saslname`, not yet normalised).
    public mutating func receiveClientFirst(_ message: [UInt8]) throws(SCRAMServerFailure) -> String {
        guard let text = String(validating: message, as: UTF8.self), let (header, bare) = GS2Header.parse(Substring(text)) else {
            throw .malformedClientFirst
        }
        switch header.binding {
        case .used(let name):
            guard self.mechanism.usesChannelBinding, let binding = self.channelBinding, binding.kind.rawValue == name else {
                throw .channelBindingMismatch
            }
        case .supportedButNotUsed:
            guard !self.mechanism.usesChannelBinding else { throw .channelBindingMismatch }
            if self.plusOffered && self.channelBinding != nil { throw .downgradeDetected }
        case .none:
            guard !self.mechanism.usesChannelBinding else { throw .channelBindingMismatch }
        }
        guard let attributes = SCRAM.attributes(bare), attributes.count >= 2 else { throw .malformedClientFirst }
        if attributes[0].key == "m" { throw .unsupportedExtension }
        guard attributes[0].key == "n", let user = SCRAM.decodeName(attributes[0].value),
            attributes[1].key == "r", SCRAM.isValidNonce(attributes[1].value)
        else { throw .malformedClientFirst }
        if let authorizationID = header.authorizationID, authorizationID != user { throw .authorizationIdentityDiffers }
        let prefixLength = text.utf8.count - bare.utf8.count
        self.gs2Header = String(decoding: message.prefix(prefixLength), as: UTF8.self)
        self.clientFirstBare = String(bare)
        self.nonce = String(attributes[1].value) + self.serverNonce
        return user
    }

    /// Step 2: the server-first message for the user's keys (dummy keys for an unknown user, see `dummyKeys`).
    public mutating func serverFirst(keys: SCRAMKeys) -> [UInt8] {
        self.keys = keys
        self.serverFirst = "r=\(self.nonce),s=\(Base64.encode(keys.salt)),i=\(keys.iterations)"
        return Array(self.serverFirst.utf8)
    }

    /// Step 3: checks the client-final message; returns the server-final message (`v=…`) on success.
    public mutating func receiveClientFinal(_ message: [UInt8]) throws(SCRAMServerFailure) -> [UInt8] {
        guard let keys = self.keys else { preconditionFailure("client-final before server-first") }
        guard let text = String(validating: message, as: UTF8.self),
            let attributes = SCRAM.attributes(Substring(text)), attributes.count >= 3,
            attributes[0].key == "c", attributes[1].key == "r", attributes.last?.key == "p",
            let channelData = Base64.decode(attributes[0].value),
            let proof = Base64.decode(attributes.last!.value), proof.count == keys.algorithm.outputByteCount
        else { throw .malformedClientFinal }
        var expectedChannelData = Array(self.gs2Header.utf8)
        if self.mechanism.usesChannelBinding, let binding = self.channelBinding {
            expectedChannelData += binding.data
        }
        guard SCRAM.constantTimeEquals(channelData, expectedChannelData) else { throw .channelBindingMismatch }
        guard attributes[1].value == self.nonce else { throw .nonceMismatch }
        let withoutProof = String(decoding: message.dropLast(attributes.last!.value.utf8.count + 3), as: UTF8.self)
        let authMessage = Array("\(self.clientFirstBare),\(self.serverFirst),\(withoutProof)".utf8)
        let clientSignature = keys.algorithm.hmac(key: keys.storedKey, authMessage)
        let clientKey = SCRAM.xor(proof, clientSignature)
        guard SCRAM.constantTimeEquals(keys.algorithm.hash(clientKey), keys.storedKey) else { throw .wrongProof }
        let serverSignature = keys.algorithm.hmac(key: keys.serverKey, authMessage)
        return Array("v=\(Base64.encode(serverSignature))".utf8)
    }

    /// Keys for a user who has none (unknown, or stored with a hash SCRAM cannot use): the salt is a keyed hash of the
    /// name, so asking twice shows the same salt, as for a real user; the stored key matches no proof.
    public static func dummyKeys(user: String, algorithm: SCRAMAlgorithm, iterations: Int, secret: [UInt8]) -> SCRAMKeys {
        let salt = Array(algorithm.hmac(key: secret, Array("salt:\(user)".utf8)).prefix(SCRAMDefaults.saltByteCount))
        let unmatchable = algorithm.hmac(key: secret, Array("key:\(user)".utf8))
        return SCRAMKeys(algorithm: algorithm, iterations: iterations, salt: salt, storedKey: unmatchable, serverKey: unmatchable)
    }
}
