import POP3Core

/// Why a SCRAM exchange failed on the client. The server's `e=` text is kept only as sanitised ASCII.
public enum SCRAMClientError: Error, Sendable, Equatable, CustomStringConvertible {
    case malformedServerFirst
    case malformedServerFinal
    /// The server's nonce does not start with ours or adds nothing (RFC 5802 §5.1).
    case nonceMismatch
    /// An iteration count outside `SCRAMDefaults.minimumIterations…maximumIterations`.
    case iterationCountOutOfRange(Int)
    case unsupportedExtension
    /// The server could not prove it knows the password: it is not the server the keys were made for.
    case serverSignatureMismatch
    /// `e=…` from the server.
    case serverError(String)

    public var description: String {
        switch self {
        case .malformedServerFirst: "malformed SCRAM server-first message"
        case .malformedServerFinal: "malformed SCRAM server-final message"
        case .nonceMismatch: "the server's SCRAM nonce does not extend the client's"
        case .iterationCountOutOfRange(let count):
            "the server asks for \(count) SCRAM iterations (accepted: \(SCRAMDefaults.minimumIterations)…\(SCRAMDefaults.maximumIterations))"
        case .unsupportedExtension: "the server asks for a mandatory SCRAM extension"
        case .serverSignatureMismatch: "the server's SCRAM signature does not verify: it does not hold this account's keys"
        case .serverError(let text): "the server refused the SCRAM exchange: \(text)"
        }
    }
}

/// The client side of one SCRAM exchange (RFC 5802 §5).
public struct SCRAMClientExchange: Sendable {
    public let mechanism: SASLMechanism
    private let user: String
    private let password: String
    private let gs2Header: GS2Header
    private let channelBinding: ChannelBinding?
    private let clientNonce: String
    private var clientFirstBare = ""
    private var expectedServerSignature: [UInt8]?

    /// - `password`: already SASLprep'ed.
    /// - `channelBinding`: required for a `-PLUS` mechanism.
    /// - `tlsActive`, `serverOffersPlus`: for the `y`/`n` flag of a mechanism without `-PLUS` (RFC 5802 §6).
    public init(
        mechanism: SASLMechanism,
        user: String,
        password: String,
        channelBinding: ChannelBinding?,
        tlsActive: Bool,
        serverOffersPlus: Bool,
        clientNonce: String = SCRAM.makeNonce()
    ) {
        precondition(mechanism.scramAlgorithm != nil, "not a SCRAM mechanism")
        precondition(!mechanism.usesChannelBinding || channelBinding != nil, "-PLUS needs channel binding data")
        self.mechanism = mechanism
        self.user = user
        self.password = password
        self.clientNonce = clientNonce
        if mechanism.usesChannelBinding, let channelBinding {
            self.gs2Header = GS2Header(binding: .used(channelBinding.kind.rawValue))
            self.channelBinding = channelBinding
        } else {
            // "y": we could bind but the server offers no -PLUS; a server that does offer it then knows the list
            // was tampered with. "n" when there is no TLS or the user chose the plain mechanism over -PLUS.
            self.gs2Header = GS2Header(binding: tlsActive && !serverOffersPlus ? .supportedButNotUsed : .none)
            self.channelBinding = nil
        }
    }

    public mutating func clientFirst() -> [UInt8] {
        self.clientFirstBare = "n=\(SCRAM.encodeName(self.user)),r=\(self.clientNonce)"
        return Array((self.gs2Header.encoded + self.clientFirstBare).utf8)
    }

    /// Checks the server-first message and returns the client-final message with the proof.
    public mutating func receiveServerFirst(_ message: [UInt8]) throws(SCRAMClientError) -> [UInt8] {
        guard let algorithm = self.mechanism.scramAlgorithm else { preconditionFailure() }
        guard let text = String(validating: message, as: UTF8.self), let attributes = SCRAM.attributes(Substring(text)),
            attributes.count >= 3
        else { throw .malformedServerFirst }
        if attributes[0].key == "m" { throw .unsupportedExtension }
        guard attributes[0].key == "r", attributes[1].key == "s", attributes[2].key == "i" else { throw .malformedServerFirst }
        let nonce = attributes[0].value
        guard SCRAM.isValidNonce(nonce), nonce.hasPrefix(self.clientNonce), nonce.count > self.clientNonce.count else {
            throw .nonceMismatch
        }
        guard let salt = Base64.decode(attributes[1].value), !salt.isEmpty else { throw .malformedServerFirst }
        guard attributes[2].value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), !attributes[2].value.isEmpty else {
            throw .malformedServerFirst
        }
        guard let iterations = Int(attributes[2].value),
            (SCRAMDefaults.minimumIterations...SCRAMDefaults.maximumIterations).contains(iterations)
        else {
            throw .iterationCountOutOfRange(Int(attributes[2].value) ?? Int.max)
        }
        let channelData = Array(self.gs2Header.encoded.utf8) + (self.channelBinding?.data ?? [])
        let withoutProof = "c=\(Base64.encode(channelData)),r=\(nonce)"
        let authMessage = Array("\(self.clientFirstBare),\(text),\(withoutProof)".utf8)
        let salted = algorithm.saltedPassword(Array(self.password.utf8), salt: salt, iterations: iterations)
        let clientKey = algorithm.hmac(key: salted, Array("Client Key".utf8))
        let clientSignature = algorithm.hmac(key: algorithm.hash(clientKey), authMessage)
        let serverKey = algorithm.hmac(key: salted, Array("Server Key".utf8))
        self.expectedServerSignature = algorithm.hmac(key: serverKey, authMessage)
        return Array("\(withoutProof),p=\(Base64.encode(SCRAM.xor(clientKey, clientSignature)))".utf8)
    }

    /// Checks the server-final message: only a server that holds the user's keys can sign the exchange.
    public func receiveServerFinal(_ message: [UInt8]) throws(SCRAMClientError) {
        guard let expected = self.expectedServerSignature else { preconditionFailure("server-final before server-first") }
        guard let text = String(validating: message, as: UTF8.self), let attributes = SCRAM.attributes(Substring(text)),
            let first = attributes.first
        else { throw .malformedServerFinal }
        if first.key == "e" {
            let printable = first.value.unicodeScalars.filter { $0.value >= 0x20 && $0.value < 0x7F }.prefix(100)
            throw .serverError(String(String.UnicodeScalarView(printable)))
        }
        guard first.key == "v", let signature = Base64.decode(first.value) else { throw .malformedServerFinal }
        guard SCRAM.constantTimeEquals(signature, expected) else { throw .serverSignatureMismatch }
    }
}
