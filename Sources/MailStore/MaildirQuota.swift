import SystemIO
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An account's Maildir quota, from Dovecot's passwd-file extra fields: `userdb_quota_rule=*:storage=1G`,
/// `userdb_quota_rule2=*:messages=10000` (also without the `userdb_` prefix). Storage units: B, k/K, M, G, T (powers
/// of 1024, as Dovecot). Enforced by `pop3d deliver` (docs/security-cases.md 62).
public struct MaildirQuota: Sendable, Equatable {
    public var storageBytes: Int?
    public var messages: Int?

    public init(storageBytes: Int? = nil, messages: Int? = nil) {
        self.storageBytes = storageBytes
        self.messages = messages
    }

    public var isUnlimited: Bool { self.storageBytes == nil && self.messages == nil }

    public struct RuleError: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    /// The quota the extra fields set; unlimited when none does. A rule we cannot read is an error (a typo must not
    /// silently lift a limit). Rules for a mailbox other than `*` do not apply to a POP3 maildrop and are skipped.
    public init(extraFields: [String]) throws(RuleError) {
        self.init()
        for field in extraFields {
            guard let equals = field.firstIndex(of: "=") else { continue }
            var key = field[..<equals]
            if key.hasPrefix("userdb_") { key = key.dropFirst("userdb_".count) }
            guard key == "quota_rule" || (key.hasPrefix("quota_rule") && Int(key.dropFirst("quota_rule".count)) != nil) else { continue }
            let rule = field[field.index(after: equals)...]
            guard let colon = rule.firstIndex(of: ":") else { throw RuleError(description: "\(field): expected MAILBOX:LIMIT=VALUE") }
            guard rule[..<colon] == "*" else { continue }
            let limit = rule[rule.index(after: colon)...]
            if limit == "ignore" || limit == "none" { continue }
            guard let assign = limit.firstIndex(of: "=") else { throw RuleError(description: "\(field): expected storage=SIZE or messages=COUNT") }
            let value = limit[limit.index(after: assign)...]
            switch limit[..<assign] {
            case "storage", "bytes":
                guard let bytes = Self.size(value) else { throw RuleError(description: "\(field): size \"\(value)\" not understood (e.g. 512M, 1G)") }
                self.storageBytes = bytes == 0 ? nil : bytes
            case "messages":
                guard let count = Int(value), count >= 0 else { throw RuleError(description: "\(field): message count \"\(value)\" not understood") }
                self.messages = count == 0 ? nil : count
            default:
                throw RuleError(description: "\(field): unknown limit \"\(limit[..<assign])\" (storage, bytes or messages)")
            }
        }
    }

    /// `1024`, `10k`, `512M`, `1G`, `2T`, with an optional trailing `B`. 0 means unlimited, as in Dovecot.
    static func size(_ text: Substring) -> Int? {
        var digits = text
        if digits.last == "B" || digits.last == "b" { digits = digits.dropLast() }
        var multiplier = 1
        switch digits.last {
        case "k", "K": multiplier = 1 << 10
        case "m", "M": multiplier = 1 << 20
        case "g", "G": multiplier = 1 << 30
        case "t", "T": multiplier = 1 << 40
        default: break
        }
        if multiplier != 1 { digits = digits.dropLast() }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), let number = Int(digits), number >= 0 else { return nil }
        let (bytes, overflow) = number.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : bytes
    }

    /// What the Maildir holds now: messages in `new/` and `cur/` and their sizes (from `,S=` in the name, else the
    /// file's size). A missing Maildir holds nothing. Blocking.
    public static func usage(ofMaildir path: String) throws -> (bytes: Int, messages: Int) {
        var bytes = 0, messages = 0
        for sub in ["new", "cur"] {
            let folder = MaildropLockTable.key(for: path) + "/" + sub
            for name in try FileSystem.files(in: folder) ?? [] where !name.hasPrefix(".") {
                let size: Int
                if let named = MaildirName.sizeField(UInt8(ascii: "S"), in: MaildirName.baseName(name)) {
                    size = named
                } else if let status = try FileSystem.status(folder + "/" + name) {
                    size = Int(status.st_size)
                } else {
                    continue  // removed meanwhile
                }
                // Saturating: absurd sizes in names make the Maildir full, not the count wrap.
                let (sum, overflow) = bytes.addingReportingOverflow(size)
                bytes = overflow ? Int.max : sum
                messages += 1
            }
        }
        return (bytes, messages)
    }
}
