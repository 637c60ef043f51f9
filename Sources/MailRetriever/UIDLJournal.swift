import Foundation
import SystemIO

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// An mbox append in progress: where it starts, how long it is, and a digest of its bytes, so that recovery can tell
/// a complete append from a torn one (see ``MboxDestination``).
public struct PendingAppend: Codable, Sendable, Equatable {
    public var uid: String
    public var offset: UInt64
    public var length: UInt64
    /// SHA-256 (hex) of the appended bytes; nil for records that carry none (then recovery checks only the length
    /// and the leading `From `).
    public var sha256: String?

    public init(uid: String, offset: UInt64, length: UInt64, sha256: String? = nil) {
        self.uid = uid
        self.offset = offset
        self.length = length
        self.sha256 = sha256
    }
}

/// The UIDL journal: per account, what this client has seen and delivered. File `<dir>/<stem>.journal`.
///
/// Durability: an append-only log of text records, each fsync'ed before the call returns (so "delivered" is on disk
/// before anyone may DELE), compacted by atomic replace (temp file, fsync, rename, fsync dir) by `compact()`,
/// `forget(keepingOnly:)`, and when opened. A torn last line (crash mid-append) is ignored on load; so are
/// malformed lines (at worst a message is downloaded again and then recognised).
///
/// Format, one record per LF-terminated line, UIDs percent-encoded outside 0x21–0x7E:
/// ```
/// pop3-uidl-journal 1
/// S <firstSeen> <uid>                     seen (first time, unix seconds)
/// D <uid>                                 delivered; also clears a pending append of that UID
/// P <offset> <length> <sha256|-> <uid>    mbox append pending
/// P -                                     no append pending
/// ```
///
/// Not thread-safe; use it from one task, under the account's ``AccountLock``.
public final class UIDLJournal {
    public struct Entry: Sendable, Equatable {
        public var uid: String
        /// Unix seconds when this client first saw the UID (keep-days counts from here).
        public var firstSeen: Int64
        public var delivered: Bool

        public init(uid: String, firstSeen: Int64, delivered: Bool) {
            self.uid = uid
            self.firstSeen = firstSeen
            self.delivered = delivered
        }
    }

    static let header = "pop3-uidl-journal 1"

    public let path: String
    public let stateDirectory: String
    public let accountKey: AccountKey
    private var entries: [String: Entry] = [:]
    public private(set) var pending: PendingAppend?
    private var fd: Int32 = -1

    private init(path: String, stateDirectory: String, accountKey: AccountKey) {
        self.path = path
        self.stateDirectory = stateDirectory
        self.accountKey = accountKey
    }

    deinit {
        if fd >= 0 { FileSystem.close(fd) }
    }

    /// Opens (or creates) the account's journal and compacts it.
    public static func open(_ key: AccountKey, stateDirectory: String) throws -> UIDLJournal {
        let journal = UIDLJournal(
            path: FileSystem.join(stateDirectory, key.fileStem + ".journal"),
            stateDirectory: stateDirectory,
            accountKey: key
        )
        if let bytes = try FileSystem.readFile(journal.path) {
            try journal.load(bytes)
        }
        try journal.compact()
        return journal
    }

    /// All entries (in no particular order).
    public var allEntries: [Entry] { Array(entries.values) }

    public func entry(for uid: String) -> Entry? { entries[uid] }

    /// Records `firstSeen = now` for UIDs not in the journal yet; one fsync for the batch.
    public func noteSeen(_ uids: [String], now: Int64) throws {
        var records = ""
        var added: [Entry] = []
        var batch = Set<String>()
        for uid in uids where entries[uid] == nil && batch.insert(uid).inserted {
            records += "S \(now) \(Self.encode(uid))\n"
            added.append(Entry(uid: uid, firstSeen: now, delivered: false))
        }
        guard !added.isEmpty else { return }
        try append(records)
        for entry in added { entries[entry.uid] = entry }
    }

    /// Marks a UID delivered; durable before return. Clears a pending mbox append of the same UID in the same record.
    /// A UID never noted as seen is noted now (with ``currentTime(environment:)``).
    public func markDelivered(_ uid: String) throws {
        try self.markDelivered([uid])
    }

    /// Marks UIDs delivered with one append and one fsync; durable before return.
    public func markDelivered(_ uids: [String]) throws {
        guard !uids.isEmpty else { return }
        var records = ""
        var updated: [Entry] = []
        for uid in uids {
            var entry = entries[uid]
            if entry == nil {
                let now = currentTime()
                records += "S \(now) \(Self.encode(uid))\n"
                entry = Entry(uid: uid, firstSeen: now, delivered: false)
            }
            records += "D \(Self.encode(uid))\n"
            entry!.delivered = true
            updated.append(entry!)
        }
        try append(records)
        for entry in updated {
            entries[entry.uid] = entry
            if pending?.uid == entry.uid { pending = nil }
        }
    }

    /// Drops entries for messages no longer on the server. Call only after a successful QUIT, with the UIDs the
    /// server listed in that session minus those deleted.
    public func forget(keepingOnly serverUIDs: Set<String>) throws {
        let before = entries.count
        entries = entries.filter { serverUIDs.contains($0.key) }
        if entries.count != before { try compact() }
    }

    /// Records (or, with nil, clears) an mbox append in progress; durable before return.
    public func setPending(_ pending: PendingAppend?) throws {
        try append(Self.pendingRecord(pending))
        self.pending = pending
    }

    /// Rewrites the journal with one record per fact, by atomic replace.
    public func compact() throws {
        var text = Self.header + "\n"
        let sorted = entries.values.sorted { ($0.firstSeen, $0.uid) < ($1.firstSeen, $1.uid) }
        for entry in sorted {
            text += "S \(entry.firstSeen) \(Self.encode(entry.uid))\n"
            if entry.delivered { text += "D \(Self.encode(entry.uid))\n" }
        }
        if pending != nil { text += Self.pendingRecord(pending) }
        if fd >= 0 {
            FileSystem.close(fd)
            fd = -1
        }
        try FileSystem.atomicReplace(path, with: Array(text.utf8))
        fd = try FileSystem.open(path, O_WRONLY | O_APPEND)
    }

    // MARK: - Records

    private func append(_ records: String) throws {
        if fd < 0 { fd = try FileSystem.open(path, O_WRONLY | O_APPEND) }
        try FileSystem.write(fd, Array(records.utf8), path: path)
        try FileSystem.sync(fd, path: path)
    }

    private static func pendingRecord(_ pending: PendingAppend?) -> String {
        guard let pending else { return "P -\n" }
        return "P \(pending.offset) \(pending.length) \(pending.sha256 ?? "-") \(encode(pending.uid))\n"
    }

    private func load(_ bytes: [UInt8]) throws {
        // Only complete (LF-terminated) lines count: a crash mid-append leaves a torn last line.
        var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        lines.removeLast()  // the part after the last LF: empty, or torn
        guard let first = lines.first else { return }  // empty or header torn: a new journal
        guard String(decoding: first, as: UTF8.self) == Self.header else {
            throw MailRetrieverError.journalUnreadable(path: path, reason: "unknown format (expected '\(Self.header)')")
        }
        for line in lines.dropFirst() {
            let fields = String(decoding: line, as: UTF8.self).split(separator: " ", omittingEmptySubsequences: false)
            guard let kind = fields.first else { continue }
            switch (kind, fields.count) {
            case ("S", 3):
                guard let time = Int64(fields[1]), let uid = Self.decode(fields[2]) else { continue }
                if entries[uid] == nil { entries[uid] = Entry(uid: uid, firstSeen: time, delivered: false) }
            case ("D", 2):
                guard let uid = Self.decode(fields[1]) else { continue }
                if entries[uid] == nil { entries[uid] = Entry(uid: uid, firstSeen: 0, delivered: false) }
                entries[uid]!.delivered = true
                if pending?.uid == uid { pending = nil }
            case ("P", 2) where fields[1] == "-":
                pending = nil
            case ("P", 5):
                guard let offset = UInt64(fields[1]), let length = UInt64(fields[2]),
                    let uid = Self.decode(fields[4])
                else { continue }
                let digest = fields[3] == "-" ? nil : String(fields[3])
                pending = PendingAppend(uid: uid, offset: offset, length: length, sha256: digest)
            default:
                continue
            }
        }
    }

    static func encode(_ uid: String) -> String {
        var result = ""
        for byte in uid.utf8 {
            if byte > 0x20 && byte < 0x7F && byte != UInt8(ascii: "%") {
                result.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                result += "%" + hex2(byte).uppercased()
            }
        }
        return result.isEmpty ? "%" : result
    }

    static func decode<S: StringProtocol>(_ text: S) -> String? {
        if text == "%" { return "" }
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                guard byte > 0x20 && byte < 0x7F else { return nil }
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next(), let low = iterator.next(),
                let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
            else { return nil }
            bytes.append(value)
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
