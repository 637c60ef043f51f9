import SASL

/// The checks every account store makes the same way, whatever holds the records (the passwd-file, PostgreSQL):
/// a password against a stored field, SCRAM keys or dummy keys, and the timing cover for unknown users.
///
/// `costReference` is a stored field whose verification costs what most users' costs; an unknown user or an
/// unusable hash is checked against it, so that neither answers sooner than a wrong password.
public struct StoredCredentials: Sendable {
    public let costReference: String
    /// The iteration count most stored SCRAM keys of each hash have, for dummy exchanges (so `i=` does not tell an
    /// unknown user from a real one).
    public let commonSCRAMIterations: [SCRAMAlgorithm: Int]

    /// Derives both from the records a store holds (or a sample of them).
    public init(records: [UserRecord]) {
        self.costReference = Self.costReference(records)
        var common: [SCRAMAlgorithm: Int] = [:]
        for algorithm in SCRAMAlgorithm.allCases {
            var counts: [Int: Int] = [:]
            for record in records {
                let (scheme, hash) = PasswordHash.splitScheme(record.passwordField)
                guard scheme == algorithm.rawValue, let keys = SCRAMKeys(dovecotEncoded: hash, algorithm: algorithm) else { continue }
                counts[keys.iterations, default: 0] += 1
            }
            if let best = counts.max(by: { $0.value != $1.value ? $0.value < $1.value : $0.key > $1.key }) {
                common[algorithm] = best.key
            }
        }
        self.commonSCRAMIterations = common
    }

    /// Blocking (crypt_r, PBKDF2, Argon2): call it on a thread pool. `.success` only for a record whose field
    /// matches; nil records and unusable fields cost a check of the cost reference.
    public func authenticate(password: String, record: UserRecord?) -> AuthenticationResult {
        guard let record else {
            _ = PasswordHash.check(password: password, against: self.costReference)
            return .failure
        }
        switch PasswordHash.check(password: password, against: record.passwordField) {
        case .match:
            return .success(record)
        case .mismatch:
            return .failure
        case .unusable:
            _ = PasswordHash.check(password: password, against: self.costReference)
            return .failure
        }
    }

    /// The keys of `record` for `algorithm`, or dummy keys no proof matches (salt keyed by `secret`, so stable
    /// across restarts) when there is no record or its field cannot do SCRAM.
    public func scramLookup(user: String, record: UserRecord?, algorithm: SCRAMAlgorithm, iterations: Int, secret: [UInt8]) -> SCRAMLookup {
        let dummy = SCRAMServerExchange.dummyKeys(
            user: user,
            algorithm: algorithm,
            iterations: self.commonSCRAMIterations[algorithm] ?? iterations,
            secret: secret
        )
        if let record,
            let keys = PasswordHash.scramKeys(field: record.passwordField, algorithm: algorithm, plaintextSalt: dummy.salt, iterations: iterations)
        {
            return SCRAMLookup(record: record, keys: keys)
        }
        return SCRAMLookup(record: nil, keys: dummy)
    }

    /// The stored field (`{SCHEME}hash`) for a new password, in any store.
    public static func field(password: String, scheme: PasswordScheme, iterations: Int) throws(PasswdFileError) -> String {
        do {
            return try PasswordHash.make(password: password, scheme: scheme, iterations: iterations)
        } catch PasswordHashError.passwordContainsNUL {
            throw .invalidPassword(reason: "the password contains a NUL byte")
        } catch PasswordHashError.tooFewIterations(let count) {
            throw .invalidPassword(reason: "\(count) SCRAM iterations are too few (at least \(SCRAMDefaults.minimumIterations))")
        } catch {
            throw .invalidPassword(reason: "\(error)")
        }
    }

    /// A `$6$` (5000 rounds) hash of a random password nobody knows.
    static let dummySHA512Crypt =
        "{SHA512-CRYPT}$6$tymgAN65HV.zCtfH$"
        + "gs3H5a9yeyUjVG7o7EvuMGFKiPEeAQEpvRJEgLAGIs0jywEXWGi632Yk/MeuIkuZhWRVQ1d6Cd8JQk8Cf2fT4/"

    /// The password field whose verification costs what most users' cost: a user's own field for the most common
    /// crypt method and parameters, or the SHA512-CRYPT dummy if that is the most common (or nothing is).
    static func costReference(_ records: [UserRecord]) -> String {
        var counts: [String: (count: Int, field: String)] = [:]
        for record in records {
            guard let costClass = Self.costClass(record.passwordField) else { continue }
            counts[costClass, default: (0, record.passwordField)].count += 1
        }
        // Most users; ties broken by the class name so the choice does not depend on dictionary order.
        let best = counts.max { lhs, rhs in
            lhs.value.count != rhs.value.count ? lhs.value.count < rhs.value.count : lhs.key > rhs.key
        }
        guard let best, best.key != "$6$" else { return Self.dummySHA512Crypt }
        return best.value.field
    }

    /// The crypt method and cost parameters of a field ("$6$", "$6$rounds=10000$", "$2y$10$", "$y$j9T$"), or `nil`
    /// for fields that do not go through crypt_r or can never match.
    static func costClass(_ field: String) -> String? {
        let (scheme, hash) = PasswordHash.splitScheme(field)
        switch scheme {
        case "SCRAM-SHA-256", "SCRAM-SHA-1":
            // The iteration count comes first: "4096,salt,…".
            return hash.split(separator: ",").first.map { "\(scheme!):\($0)" }
        case "PBKDF2":
            let parts = hash.split(separator: "$")
            return parts.count >= 3 ? "PBKDF2:\(parts[2])" : nil
        case "ARGON2ID", "ARGON2I":
            // "$argon2id$v=19$m=65536,t=3,p=1$salt$hash": version and parameters.
            let parts = hash.split(separator: "$")
            return parts.count >= 3 ? "$\(parts[0])$\(parts[1])$\(parts[2])$" : nil
        case let name? where DigestScheme(scheme: name) != nil:
            return name
        default:
            break
        }
        let cryptSchemes: [String?] = [nil, "CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "MD5-CRYPT"]
        guard cryptSchemes.contains(scheme) else { return nil }
        let parts = hash.split(separator: "$", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[0].isEmpty else { return nil }
        switch parts[1] {
        case "5", "6":
            return parts[2].hasPrefix("rounds=") ? "$\(parts[1])$\(parts[2])$" : "$\(parts[1])$"
        case "2a", "2b", "2y", "y", "gy", "7":
            return "$\(parts[1])$\(parts[2])$"
        default:
            return "$\(parts[1])$"
        }
    }
}
