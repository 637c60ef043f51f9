import Logging
import SystemIO

#if canImport(Glibc)
import Glibc
#endif

/// The Maildir side of `pop3d import`: messages copied from another POP3 server keep that server's UIDL, so no
/// client downloads them again. Each imported file carries `,I=<tag>` in its name (16 hex digits of the FNV-1a
/// hash of its old UIDL), so an import killed between storing a message and recording its UIDL finds it again instead
/// of copying it twice; the UIDL itself goes into dovecot-uidlist as Dovecot's `P` field.
public struct MaildirImport: Sendable {
    public let path: String
    let store: MaildirStore

    public init(maildir path: String, logger: Logger) {
        self.path = MaildropLockTable.key(for: path)
        self.store = MaildirStore(path: self.path, logger: logger)
    }

    /// The name field that marks a file imported under `uniqueID`.
    public static func tag(_ uniqueID: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in uniqueID.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// What the Maildir serves now: (UIDL, POP3 size) per message, in POP3 order. Blocking.
    public func listing() throws -> [(uniqueID: String, size: Int)] {
        guard try FileSystem.status(self.path + "/new") != nil || FileSystem.status(self.path + "/cur") != nil else { return [] }
        return try self.store.index().map { ($0.uniqueID, $0.size) }
    }

    /// Tag → base name of every file that carries an import tag.
    public func taggedFiles() throws -> [String: String] {
        var result: [String: String] = [:]
        for sub in ["new", "cur"] {
            for name in try FileSystem.files(in: self.path + "/" + sub) ?? [] {
                let base = MaildirName.baseName(name)
                // The fields after the unique part: ",S=…,W=…,I=<tag>".
                for field in base.split(separator: ",").dropFirst() where field.hasPrefix("I=") {
                    result[String(field.dropFirst(2))] = String(base)
                }
            }
        }
        return result
    }

    /// Stores `size` octets of `spool` (read with pread from 0) durably, named with `uniqueID`'s tag; returns the
    /// base name.
    public func store(spool: Int32, size: Int, uniqueID: String) throws -> String {
        let name = try MaildirDelivery.deliver(prefix: [], spool: spool, size: size, toMaildir: self.path, nameField: ",I=" + Self.tag(uniqueID))
        return String(MaildirName.baseName(name))
    }

    /// Records the old UIDL of each stored file (base name → UIDL) in dovecot-uidlist. Blocking.
    public func recordUniqueIDs(_ byBaseName: [String: String]) throws {
        guard !byBaseName.isEmpty else { return }
        try self.store.setUniqueIDs(byBaseName)
    }
}
