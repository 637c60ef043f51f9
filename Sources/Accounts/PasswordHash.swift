import CCrypt
import Crypto
import CryptoExtras
import POP3Core
import SASL

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Password schemes `pop3d user add` can write. Verification also accepts what `doveadm pw` writes for
/// `{MD5-CRYPT}`, `{CLEARTEXT}`, `{PBKDF2}`, `{SSHA512}`, `{SSHA256}`, `{SSHA}`, `{SHA512}`, `{SHA256}`, `{SHA}`/`{SHA1}`,
/// and `{ARGON2ID}`/`{ARGON2I}` (through the system's libargon2, see ``Argon2``).
///
/// Names are Dovecot's (`doveadm pw -s SCHEME`), so a passwd-file moves between Dovecot and pop3d unchanged.
public enum PasswordScheme: String, Sendable, CaseIterable {
    /// `$6$`, SHA-512 crypt, 5000 rounds (the default, as `doveadm pw` writes it), 16-character salt.
    case sha512Crypt = "SHA512-CRYPT"
    /// `$5$`, SHA-256 crypt, 5000 rounds.
    case sha256Crypt = "SHA256-CRYPT"
    /// `$2y$`, bcrypt, cost 10. bcrypt only uses the first 72 bytes of a password.
    case blfCrypt = "BLF-CRYPT"
    /// libxcrypt's preferred method (yescrypt `$y$` on Debian), as `crypt_gensalt_rn(NULL, …)` chooses it.
    case crypt = "CRYPT"
    /// Dovecot's SCRAM format: iterations, salt, StoredKey, ServerKey. Works for SCRAM-SHA-256(-PLUS) logins, which
    /// never send the password, as well as for USER/PASS and PLAIN.
    case scramSHA256 = "SCRAM-SHA-256"
    /// The same for SCRAM-SHA-1 (offered only when `auth.mechanisms` names it).
    case scramSHA1 = "SCRAM-SHA-1"
    /// The password itself. For tests and demos only.
    case plain = "PLAIN"

    /// `(prefix, count)` for `crypt_gensalt_rn`; `nil` for schemes that are not crypt(3).
    fileprivate var gensaltParameters: (prefix: String?, count: UInt)? {
        switch self {
        case .sha512Crypt: return ("$6$", 0)  // 0 = the method's default: 5000 rounds, no "rounds=" in the setting
        case .sha256Crypt: return ("$5$", 0)
        case .blfCrypt: return ("$2y$", 10)
        case .crypt: return (nil, 0)  // libxcrypt's default method and cost
        case .plain, .scramSHA256, .scramSHA1: return nil
        }
    }

    /// The SCRAM hash of a SCRAM scheme.
    var scramAlgorithm: SCRAMAlgorithm? {
        switch self {
        case .scramSHA256: .sha256
        case .scramSHA1: .sha1
        default: nil
        }
    }
}

/// Why ``PasswordHash/make(password:scheme:)`` failed. Never contains the password.
public enum PasswordHashError: Error, Sendable, Equatable, CustomStringConvertible {
    /// crypt(3) takes C strings, so a password with a NUL byte cannot be hashed faithfully.
    case passwordContainsNUL
    case saltGenerationFailed(scheme: PasswordScheme, reason: String)
    /// A SCRAM iteration count below `SCRAMDefaults.minimumIterations` (RFC 7677 §4).
    case tooFewIterations(Int)
    case hashingFailed(scheme: PasswordScheme, reason: String)

    public var description: String {
        switch self {
        case .passwordContainsNUL:
            return "password contains a NUL byte"
        case .tooFewIterations(let count):
            return "\(count) SCRAM iterations are too few (at least \(SCRAMDefaults.minimumIterations))"
        case .saltGenerationFailed(let scheme, let reason):
            return "cannot generate a salt for \(scheme.rawValue): \(reason)"
        case .hashingFailed(let scheme, let reason):
            return "cannot hash a password with \(scheme.rawValue): \(reason)"
        }
    }
}

/// Making and checking Dovecot-style `{SCHEME}hash` password fields through the system libcrypt (libxcrypt).
public enum PasswordHash {
    /// Returns `"{SCHEME}hash"`.
    ///
    /// - SHA512-CRYPT: `$6$` with a 16-character salt (5000 rounds, like `doveadm pw`);
    /// - SHA256-CRYPT: `$5$`; BLF-CRYPT: `$2y$` cost 10; CRYPT: yescrypt `$y$` (libxcrypt's default);
    /// - SCRAM-SHA-256, SCRAM-SHA-1: `iterations` (at least 4096), a 16-byte salt, of the SASLprep'ed password;
    /// - PLAIN: the password itself.
    ///
    /// Salts come from `crypt_gensalt_rn`'s own entropy source (`getentropy`/`getrandom`, a CSPRNG), SCRAM salts from
    /// the system random number generator.
    public static func make(password: String, scheme: PasswordScheme, iterations: Int = SCRAMDefaults.iterations) throws -> String {
        guard !password.utf8.contains(0) else { throw PasswordHashError.passwordContainsNUL }
        if let algorithm = scheme.scramAlgorithm {
            guard iterations >= SCRAMDefaults.minimumIterations else { throw PasswordHashError.tooFewIterations(iterations) }
            let keys = SCRAMKeys.derive(
                password: StringPreparation.saslPrep(password) ?? password,
                salt: SCRAM.randomSalt(),
                iterations: iterations,
                algorithm: algorithm
            )
            return "{\(scheme.rawValue)}\(keys.dovecotEncoded)"
        }
        guard let parameters = scheme.gensaltParameters else {
            return "{\(scheme.rawValue)}\(password)"
        }
        let setting = try Self.generateSetting(scheme: scheme, prefix: parameters.prefix, count: parameters.count)
        let hash = Self.withCrypt(password: password, setting: setting) { output -> String? in
            guard let output else { return nil }
            return String(decoding: output, as: UTF8.self)
        }
        guard let hash else {
            throw PasswordHashError.hashingFailed(scheme: scheme, reason: "crypt_r rejected the setting")
        }
        return "{\(scheme.rawValue)}\(hash)"
    }

    /// Verifies `password` against a stored field.
    ///
    /// A field without a `{SCHEME}` prefix is `{CRYPT}` (Dovecot's `default_pass_scheme`). `{CRYPT}`,
    /// `{SHA512-CRYPT}`, `{SHA256-CRYPT}`, `{BLF-CRYPT}` and `{MD5-CRYPT}` go through `crypt_r` with a heap-allocated
    /// `struct crypt_data` per call (thread-safe); the named schemes also require their own `$id$`, so a field cannot
    /// claim one scheme and use another. `{PLAIN}`/`{CLEARTEXT}` compare directly. Comparisons are constant-time.
    /// Unknown schemes, empty hashes and locked hashes (`*…`, `!…`) never match.
    public static func verify(password: String, against storedField: String) -> Bool {
        Self.check(password: password, against: storedField) == .match
    }

    enum Outcome: Equatable {
        case match
        case mismatch
        /// The field can never match (locked, empty, unknown scheme). Callers may spend a dummy hash to keep timing
        /// the same as a real mismatch.
        case unusable
    }

    static func check(password: String, against storedField: String) -> Outcome {
        let (scheme, hash) = Self.splitScheme(storedField)
        let allowedPrefixes: [String]?
        switch scheme {
        case nil, "CRYPT":
            allowedPrefixes = nil
        case "SHA512-CRYPT":
            allowedPrefixes = ["$6$"]
        case "SHA256-CRYPT":
            allowedPrefixes = ["$5$"]
        case "BLF-CRYPT":
            allowedPrefixes = ["$2a$", "$2b$", "$2y$"]
        case "MD5-CRYPT":
            allowedPrefixes = ["$1$"]
        case "PLAIN", "CLEARTEXT":
            return Self.constantTimeEquals(Array(password.utf8), Array(hash.utf8)) ? .match : .mismatch
        case "SCRAM-SHA-256", "SCRAM-SHA-1":
            guard let keys = Self.scramKeys(scheme: scheme!, hash: hash) else { return .unusable }
            return keys.matches(password: password) ? .match : .mismatch
        case "PBKDF2":
            return DigestScheme.checkPBKDF2(password: password, hash: hash)
        case "ARGON2ID", "ARGON2I":
            return Argon2.verify(password: password, encoded: hash, scheme: scheme!)
        default:
            if let digest = DigestScheme(scheme: scheme!) { return digest.check(password: password, hash: hash) }
            return .unusable
        }
        guard let first = hash.utf8.first, first != UInt8(ascii: "*"), first != UInt8(ascii: "!") else {
            return .unusable
        }
        if let allowedPrefixes, !allowedPrefixes.contains(where: { hash.hasPrefix($0) }) {
            return .unusable
        }
        guard !password.utf8.contains(0) else { return .mismatch }
        let expected = Array(hash.utf8)
        let outcome = Self.withCrypt(password: password, setting: hash) { output -> Outcome in
            guard let output else { return .unusable }
            return Self.constantTimeEquals(output, expected) ? .match : .mismatch
        }
        return outcome
    }

    /// The SCRAM keys a stored field holds for `algorithm`: the field's own keys for `{SCRAM-…}` of that hash, keys
    /// derived from the password for `{PLAIN}`/`{CLEARTEXT}` (with `salt` and `iterations`), else nil — the user
    /// then fails SCRAM as a wrong password does.
    public static func scramKeys(
        field: String,
        algorithm: SCRAMAlgorithm,
        plaintextSalt salt: [UInt8],
        iterations: Int
    ) -> SCRAMKeys? {
        let (scheme, hash) = Self.splitScheme(field)
        switch scheme {
        case algorithm.rawValue:
            return Self.scramKeys(scheme: algorithm.rawValue, hash: hash)
        case "PLAIN", "CLEARTEXT":
            guard !hash.isEmpty else { return nil }
            return SCRAMKeys.derive(password: StringPreparation.saslPrep(hash) ?? hash, salt: salt, iterations: iterations, algorithm: algorithm)
        default:
            return nil
        }
    }

    private static func scramKeys(scheme: String, hash: String) -> SCRAMKeys? {
        guard let algorithm = SCRAMAlgorithm(rawValue: scheme) else { return nil }
        return SCRAMKeys(dovecotEncoded: hash, algorithm: algorithm)
    }

    /// `("SCHEME" upper-cased, rest)` for `{SCHEME}rest`, else `(nil, field)`.
    static func splitScheme(_ field: String) -> (scheme: String?, hash: String) {
        guard field.hasPrefix("{"), let close = field.firstIndex(of: "}") else { return (nil, field) }
        let name = field[field.index(after: field.startIndex)..<close]
        return (name.uppercased(), String(field[field.index(after: close)...]))
    }

    /// Compares in time that depends only on the lengths, never on where the bytes differ.
    static func constantTimeEquals(_ candidate: some Collection<UInt8>, _ expected: [UInt8]) -> Bool {
        let candidate = Array(candidate)
        var difference: UInt8 = candidate.count == expected.count ? 0 : 1
        for index in expected.indices {
            let byte = index < candidate.count ? candidate[index] : 0
            difference |= byte ^ expected[index]
        }
        return difference == 0
    }

    /// Runs `crypt_r` with a zeroed, heap-allocated `struct crypt_data` (≈32 KiB, too big for a thread's stack
    /// comfort) and wipes it afterwards. `body` gets the output bytes, or `nil` when crypt failed (libxcrypt returns
    /// a "*0"/"*1" failure token rather than NULL).
    private static func withCrypt<Result>(
        password: String,
        setting: String,
        _ body: (UnsafeBufferPointer<UInt8>?) -> Result
    ) -> Result {
        let size = MemoryLayout<crypt_data>.size
        guard let raw = calloc(1, size) else { return body(nil) }
        defer {
            explicit_bzero(raw, size)
            free(raw)
        }
        let data = raw.bindMemory(to: crypt_data.self, capacity: 1)
        let output = password.withCString { phrase in
            setting.withCString { setting in
                crypt_r(phrase, setting, data)
            }
        }
        guard let output, output.pointee != CChar(UInt8(ascii: "*")) else { return body(nil) }
        let length = strlen(output)
        return output.withMemoryRebound(to: UInt8.self, capacity: length) { bytes in
            body(UnsafeBufferPointer(start: bytes, count: length))
        }
    }

    private static func generateSetting(scheme: PasswordScheme, prefix: String?, count: UInt) throws -> String {
        var buffer = [CChar](repeating: 0, count: Int(CRYPT_GENSALT_OUTPUT_SIZE))
        let capacity = Int32(buffer.count)
        errno = 0
        let result: UnsafeMutablePointer<CChar>? = buffer.withUnsafeMutableBufferPointer { output in
            if let prefix {
                return prefix.withCString { crypt_gensalt_rn($0, count, nil, 0, output.baseAddress, capacity) }
            }
            return crypt_gensalt_rn(nil, count, nil, 0, output.baseAddress, capacity)
        }
        guard result != nil else {
            let reason = errno == 0 ? "crypt_gensalt_rn failed" : String(cString: strerror(errno))
            throw PasswordHashError.saltGenerationFailed(scheme: scheme, reason: reason)
        }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
}
