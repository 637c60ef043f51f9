import Crypto
import CryptoExtras
import POP3Core

/// Dovecot's digest schemes, as `doveadm pw` writes them: `{SHA512}`, `{SHA256}`, `{SHA}`/`{SHA1}` (the digest of the
/// password) and `{SSHA512}`, `{SSHA256}`, `{SSHA}` (the digest of password + salt, then the salt), base64 unless the
/// scheme name ends in `.HEX`. They are fast hashes: accepted so existing passwd-files keep working, never written.
struct DigestScheme {
    enum Function { case sha1, sha256, sha512 }

    let function: Function
    let salted: Bool
    let hex: Bool

    /// Nil for a name that is not one of these schemes.
    init?(scheme: String) {
        var name = Substring(scheme)
        var hex = false
        if let dot = name.lastIndex(of: ".") {
            switch name[name.index(after: dot)...] {
            case "HEX": hex = true
            case "B64", "BASE64": hex = false
            default: return nil
            }
            name = name[..<dot]
        }
        switch name {
        case "SHA", "SHA1": (self.function, self.salted) = (.sha1, false)
        case "SHA256": (self.function, self.salted) = (.sha256, false)
        case "SHA512": (self.function, self.salted) = (.sha512, false)
        case "SSHA": (self.function, self.salted) = (.sha1, true)
        case "SSHA256": (self.function, self.salted) = (.sha256, true)
        case "SSHA512": (self.function, self.salted) = (.sha512, true)
        default: return nil
        }
        self.hex = hex
    }

    private var digestLength: Int {
        switch self.function {
        case .sha1: Insecure.SHA1.byteCount
        case .sha256: SHA256.byteCount
        case .sha512: SHA512.byteCount
        }
    }

    private func digest(_ bytes: [UInt8]) -> [UInt8] {
        switch self.function {
        case .sha1: Array(Insecure.SHA1.hash(data: bytes))
        case .sha256: Array(SHA256.hash(data: bytes))
        case .sha512: Array(SHA512.hash(data: bytes))
        }
    }

    func check(password: String, hash: String) -> PasswordHash.Outcome {
        guard let decoded = self.hex ? Self.decodeHex(hash) : Base64.decode(hash) else { return .unusable }
        let length = self.digestLength
        guard self.salted ? decoded.count > length : decoded.count == length else { return .unusable }
        let salt = Array(decoded[length...])
        let computed = self.digest(Array(password.utf8) + salt)
        return PasswordHash.constantTimeEquals(computed, Array(decoded[..<length])) ? .match : .mismatch
    }

    /// `{PBKDF2}$1$salt$rounds$hex`: PBKDF2-HMAC-SHA1 of the password with the salt text, 20 bytes (Dovecot's format).
    static func checkPBKDF2(password: String, hash: String) -> PasswordHash.Outcome {
        let parts = hash.split(separator: "$", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0].isEmpty, parts[1] == "1", !parts[2].isEmpty,
            let rounds = Int(parts[3]), rounds > 0, rounds <= Self.maximumPBKDF2Rounds,
            let expected = Self.decodeHex(parts[4]), expected.count == Insecure.SHA1.byteCount
        else { return .unusable }
        guard
            let key = try? KDF.Insecure.PBKDF2.deriveKey(
                from: Array(password.utf8),
                salt: Array(parts[2].utf8),
                using: .insecureSHA1,
                outputByteCount: expected.count,
                unsafeUncheckedRounds: rounds
            )
        else { return .unusable }
        return PasswordHash.constantTimeEquals(key.withUnsafeBytes { Array($0) }, expected) ? .match : .mismatch
    }

    /// A bound on the rounds of a stored `{PBKDF2}` field, so a broken or hostile line cannot stall a login thread.
    static let maximumPBKDF2Rounds = 10_000_000

    static func decodeHex(_ text: some StringProtocol) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            guard let high = Self.hexValue(digits[index]), let low = Self.hexValue(digits[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }

    private static func hexValue(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
