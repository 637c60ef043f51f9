import Crypto
import CryptoExtras
import POP3Core

/// The hash function of a SCRAM mechanism (RFC 5802 §2.2, RFC 7677).
public enum SCRAMAlgorithm: String, Sendable, CaseIterable {
    case sha1 = "SCRAM-SHA-1"
    case sha256 = "SCRAM-SHA-256"

    /// Output length of H and HMAC.
    public var outputByteCount: Int {
        switch self {
        case .sha1: Insecure.SHA1.byteCount
        case .sha256: SHA256.byteCount
        }
    }

    func hash(_ data: [UInt8]) -> [UInt8] {
        switch self {
        case .sha1: Array(Insecure.SHA1.hash(data: data))
        case .sha256: Array(SHA256.hash(data: data))
        }
    }

    func hmac(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        let key = SymmetricKey(data: key)
        switch self {
        case .sha1: return Array(HMAC<Insecure.SHA1>.authenticationCode(for: data, using: key))
        case .sha256: return Array(HMAC<SHA256>.authenticationCode(for: data, using: key))
        }
    }

    /// Hi(): PBKDF2 with HMAC of this hash, one block (RFC 5802 §2.2).
    func saltedPassword(_ password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
        let function: KDF.Insecure.PBKDF2.HashFunction = self == .sha1 ? .insecureSHA1 : .sha256
        // BoringSSL's PBKDF2 fails only on allocation failure or a zero iteration count; callers check the count.
        let key = try! KDF.Insecure.PBKDF2.deriveKey(
            from: password,
            salt: salt,
            using: function,
            outputByteCount: self.outputByteCount,
            unsafeUncheckedRounds: iterations
        )
        return key.withUnsafeBytes { Array($0) }
    }
}

/// Named limits of SCRAM exchanges.
public enum SCRAMDefaults {
    /// The least iteration count pop3d writes and the pop3 client accepts (RFC 7677 §4: "at least 4096").
    public static let minimumIterations = 4096
    /// The most iterations the client computes for a server (10⁶ PBKDF2-SHA-256 rounds ≈ 0.5 s): a server asking for
    /// more would make the client burn CPU on its behalf.
    public static let maximumIterations = 1_000_000
    /// The most iterations a stored key may have: a bound on the PBKDF2 a USER/PASS login against it costs, so that a
    /// broken passwd-file line cannot stall (or, past UInt32, crash) the server. A larger count makes the field unusable.
    public static let maximumStoredIterations = 10_000_000
    /// Iterations for new hashes (`pop3d user add --scheme SCRAM-SHA-256`), as Dovecot writes them.
    public static let iterations = 4096
    /// Salt bytes for new hashes (Dovecot: 16).
    public static let saltByteCount = 16
    /// Random bytes in a nonce (base64-encoded on the wire).
    public static let nonceByteCount = 18
}

/// What a server stores for a SCRAM user instead of the password (RFC 5802 §3): salt, iteration count, StoredKey
/// and ServerKey. Enough to check a proof, not enough to log in as the user elsewhere.
public struct SCRAMKeys: Sendable, Equatable, CustomStringConvertible {
    public var algorithm: SCRAMAlgorithm
    public var iterations: Int
    public var salt: [UInt8]
    public var storedKey: [UInt8]
    public var serverKey: [UInt8]

    public init(algorithm: SCRAMAlgorithm, iterations: Int, salt: [UInt8], storedKey: [UInt8], serverKey: [UInt8]) {
        self.algorithm = algorithm
        self.iterations = iterations
        self.salt = salt
        self.storedKey = storedKey
        self.serverKey = serverKey
    }

    /// Derives the keys from a password (already SASLprep'ed).
    public static func derive(password: String, salt: [UInt8], iterations: Int, algorithm: SCRAMAlgorithm) -> SCRAMKeys {
        let salted = algorithm.saltedPassword(Array(password.utf8), salt: salt, iterations: iterations)
        let clientKey = algorithm.hmac(key: salted, Array("Client Key".utf8))
        return SCRAMKeys(
            algorithm: algorithm,
            iterations: iterations,
            salt: salt,
            storedKey: algorithm.hash(clientKey),
            serverKey: algorithm.hmac(key: salted, Array("Server Key".utf8))
        )
    }

    /// Whether `password` derives these keys (constant-time comparison).
    public func matches(password: String) -> Bool {
        let candidate = Self.derive(password: password, salt: self.salt, iterations: self.iterations, algorithm: self.algorithm)
        // Both compared in full, whatever the first says.
        let storedKeyMatches = SCRAM.constantTimeEquals(candidate.storedKey, self.storedKey)
        let serverKeyMatches = SCRAM.constantTimeEquals(candidate.serverKey, self.serverKey)
        return storedKeyMatches && serverKeyMatches
    }

    /// Dovecot's passdb format after the `{SCRAM-SHA-256}` prefix: `iterations,salt,StoredKey,ServerKey` in base64
    /// (what `doveadm pw -s SCRAM-SHA-256` prints).
    public var dovecotEncoded: String {
        "\(self.iterations),\(Base64.encode(self.salt)),\(Base64.encode(self.storedKey)),\(Base64.encode(self.serverKey))"
    }

    /// Parses Dovecot's format; nil when malformed or when the key lengths do not fit the algorithm.
    public init?(dovecotEncoded text: some StringProtocol, algorithm: SCRAMAlgorithm) {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count == 4, let iterations = Int(parts[0]), (1...SCRAMDefaults.maximumStoredIterations).contains(iterations),
            let salt = Base64.decode(parts[1]), !salt.isEmpty,
            let storedKey = Base64.decode(parts[2]), storedKey.count == algorithm.outputByteCount,
            let serverKey = Base64.decode(parts[3]), serverKey.count == algorithm.outputByteCount
        else { return nil }
        self.init(algorithm: algorithm, iterations: iterations, salt: salt, storedKey: storedKey, serverKey: serverKey)
    }

    public var description: String { "SCRAMKeys(\(self.algorithm.rawValue), i=\(self.iterations), <redacted>)" }
}

/// Message syntax shared by the SCRAM client and server (RFC 5802 §7).
public enum SCRAM {
    /// Random printable nonce text: base64 of `SCRAMDefaults.nonceByteCount` bytes (no ',').
    public static func makeNonce() -> String {
        var generator = SystemRandomNumberGenerator()
        return Base64.encode((0..<SCRAMDefaults.nonceByteCount).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
    }

    public static func randomSalt() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<SCRAMDefaults.saltByteCount).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    /// A `saslname`: ',' and '=' escaped as =2C and =3D.
    static func encodeName(_ name: String) -> String {
        var out = ""
        for character in name.unicodeScalars {
            switch character {
            case ",": out += "=2C"
            case "=": out += "=3D"
            default: out.unicodeScalars.append(character)
            }
        }
        return out
    }

    /// Undoes `encodeName`; nil for any other '=' sequence, a ',' or an empty name.
    static func decodeName(_ text: Substring) -> String? {
        guard !text.isEmpty else { return nil }
        var out = ""
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            if character == "=" {
                let code = text[index...].prefix(3)
                switch code {
                case "=2C": out.append(",")
                case "=3D": out.append("=")
                default: return nil
                }
                index = text.index(index, offsetBy: 3)
                continue
            }
            guard character != "," else { return nil }
            out.append(character)
            index = text.index(after: index)
        }
        return out
    }

    /// A nonce is printable ASCII except ',' (RFC 5802 §7 `printable`).
    static func isValidNonce(_ text: Substring) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy { $0 >= 0x21 && $0 <= 0x7E && $0 != UInt8(ascii: ",") }
    }

    /// Splits `a=b,c=d` into attributes, keeping order. Nil when an attribute is not `letter=value`.
    static func attributes(_ text: Substring) -> [(key: Character, value: Substring)]? {
        var result: [(Character, Substring)] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard part.count >= 2, let key = part.first, key.isASCII, key.isLetter,
                part[part.index(after: part.startIndex)] == "="
            else { return nil }
            result.append((key, part.dropFirst(2)))
        }
        return result
    }

    static func xor(_ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
        zip(a, b).map { $0 ^ $1 }
    }

    /// Equality in time that depends only on the lengths.
    public static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }
}

/// The GS2 header that starts a SCRAM exchange (RFC 5802 §7 `gs2-header`).
public struct GS2Header: Sendable, Equatable {
    public enum Binding: Sendable, Equatable {
        /// `n`: the client does not support channel binding.
        case none
        /// `y`: the client supports it but thinks the server does not.
        case supportedButNotUsed
        /// `p=name`: the client binds to this channel.
        case used(String)
    }

    public var binding: Binding
    public var authorizationID: String?

    /// The channel binding name of `p=`, nil for `n` and `y`.
    public var bindingName: String? {
        if case .used(let name) = self.binding { return name }
        return nil
    }

    public init(binding: Binding, authorizationID: String? = nil) {
        self.binding = binding
        self.authorizationID = authorizationID
    }

    public var encoded: String {
        let flag: String
        switch self.binding {
        case .none: flag = "n"
        case .supportedButNotUsed: flag = "y"
        case .used(let name): flag = "p=\(name)"
        }
        return "\(flag),\(self.authorizationID.map { "a=\(SCRAM.encodeName($0))" } ?? ""),"
    }

    /// Parses the header at the start of a client-first message and returns it with the rest (the bare message).
    static func parse(_ message: Substring) -> (GS2Header, bare: Substring)? {
        let parts = message.split(separator: ",", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        let binding: Binding
        switch parts[0] {
        case "n": binding = .none
        case "y": binding = .supportedButNotUsed
        case let flag where flag.hasPrefix("p="):
            let name = flag.dropFirst(2)
            guard !name.isEmpty, name.utf8.allSatisfy({ $0 < 0x80 && (Character(Unicode.Scalar($0)).isLetter || Character(Unicode.Scalar($0)).isNumber || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".")) })
            else { return nil }
            binding = .used(String(name))
        default: return nil
        }
        var authorizationID: String?
        if !parts[1].isEmpty {
            guard parts[1].hasPrefix("a="), let name = SCRAM.decodeName(parts[1].dropFirst(2)) else { return nil }
            authorizationID = name
        }
        return (GS2Header(binding: binding, authorizationID: authorizationID), parts[2])
    }
}
