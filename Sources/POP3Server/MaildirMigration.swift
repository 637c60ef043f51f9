import Accounts
import Logging
import MailStore
import MailStorePostgres
import POP3Core
import SystemIO

#if canImport(Glibc)
    import Glibc
#endif

/// `pop3d migrate maildir --from OLD.yaml --config NEW.yaml`: every user of a Maildir set-up (passwd-file entries
/// and Maildirs) into PostgreSQL. Passwords move as their stored fields (they keep working, SCRAM keys too); each
/// message keeps its UIDL (Dovecot's, from dovecot-uidlist), so no client downloads anything again. Resumable: a
/// message whose UIDL the account already has is skipped, so a run that was interrupted is simply run again.
/// Each Maildir is opened with its maildrop lock (a pop3d serving it meanwhile gets [IN-USE]). The Maildirs are
/// left as they are.
public struct MaildirMigration {
    public struct Report: Sendable {
        public var user: String
        public var copied = 0
        public var alreadyThere = 0
        /// With verify: what differs between the Maildir and the database (empty: the same listing).
        public var differences: [String] = []
    }

    let source: ServerConfiguration
    let target: ServerConfiguration
    let logger: Logger

    public init(from source: ServerConfiguration, to target: ServerConfiguration, logger: Logger) throws {
        guard source.storageBackend == .maildir, source.usesPasswdFile else {
            throw ConfigurationError(key: "storage.backend", "--from must be a Maildir configuration with a passwd_file")
        }
        guard target.storageBackend == .postgres, target.postgres != nil else {
            throw ConfigurationError(key: "storage.backend", "--config must have storage.backend: postgres")
        }
        self.source = source
        self.target = target
        self.logger = logger
    }

    /// Copies (unless `copy` is false) and, with `verify`, compares each user's listings afterwards.
    public func run(copy: Bool = true, verify: Bool, progress: @escaping @Sendable (Report) -> Void) throws -> [Report] {
        let passwd = try PasswdFile.parse(
            String(contentsOfFile: self.source.passwdFile, encoding: .utf8),
            path: self.source.passwdFile
        )
        let settings = self.target.postgres!
        let database = try MailDatabase(settings: settings, password: try ServerConfiguration.readDatabasePassword(settings), logger: self.logger)
        let locator = MaildirLocator(template: self.source.maildirTemplate)
        let provider = MaildirProvider(threadPool: .singleton, logger: self.logger)
        let records = passwd.records
        return try runBlocking {
            try await database.withRunning { database in
                guard try await database.schemaVersion() == DatabaseSchema.version else {
                    throw DatabaseError("the database schema is not current: run `pop3d db migrate --config FILE` first")
                }
                var reports: [Report] = []
                for record in records {
                    var report = Report(user: record.name)
                    let account = try await database.ensureAccount(record.name, passwordField: record.passwordField)
                    let path = try locator.path(for: record)
                    let maildrop = try await provider.openMaildrop(user: record.name, path: path, owner: nil)
                    do {
                        var stored = try await database.listing(account: account)
                        if copy {
                            for (index, message) in maildrop.messages.enumerated() {
                                if stored[message.uniqueID] != nil {
                                    report.alreadyThere += 1
                                    continue
                                }
                                let content = try await maildrop.content(ofMessageAt: index, chunkSize: DatabaseSchema.chunkSize)
                                switch await database.deliverResult(account: account, maximumSize: nil, bytes: .content(content), uidl: message.uniqueID) {
                                case .success: report.copied += 1
                                case .failure(let failure): throw DatabaseError("\(record.name), message \(message.uniqueID): \(failure)")
                                }
                            }
                            if verify { stored = try await database.listing(account: account) }
                        }
                        if verify {
                            report.differences = Self.compare(maildir: maildrop.messages, database: stored)
                        }
                    } catch {
                        await maildrop.release()
                        throw error
                    }
                    await maildrop.release()
                    progress(report)
                    reports.append(report)
                }
                return reports
            }
        }
    }

    /// The reverse (`pop3d export maildir`), so that nobody is locked in: every database account into the Maildir
    /// set-up (a passwd-file line with the stored password field, for an account it lacks) and every message into
    /// the account's Maildir with its UIDL recorded in dovecot-uidlist. Resumable as `pop3d import` is: a file
    /// carries its UIDL's tag, so a run killed between storing and recording finds it again.
    public func export(verify: Bool, progress: @escaping @Sendable (Report) -> Void) throws -> [Report] {
        let settings = self.target.postgres!
        let database = try MailDatabase(settings: settings, password: try ServerConfiguration.readDatabasePassword(settings), logger: self.logger)
        let locator = MaildirLocator(template: self.source.maildirTemplate)
        let editor = PasswdFileEditor(path: self.source.passwdFile)
        let passwdPath = self.source.passwdFile
        let logger = self.logger
        return try runBlocking {
            try await database.withRunning { database in
                var reports: [Report] = []
                for account in try await database.accounts() {
                    var report = Report(user: account.name)
                    let existing = try? PasswdFile.parse(String(contentsOfFile: passwdPath, encoding: .utf8), path: passwdPath)
                    if existing?.record(named: account.name) == nil {
                        try editor.add(user: account.name, passwordField: account.passwordField)
                    }
                    let record = try PasswdFile.parse(String(contentsOfFile: passwdPath, encoding: .utf8), path: passwdPath).record(named: account.name)!
                    let target = MaildirImport(maildir: try locator.path(for: record), logger: logger)
                    let present = Set(try target.listing().map(\.uniqueID))
                    let tagged = try target.taggedFiles()
                    var toRecord: [String: String] = [:]
                    for message in try await database.messages(account: account.id) {
                        if present.contains(message.uidl) {
                            report.alreadyThere += 1
                            continue
                        }
                        if let base = tagged[MaildirImport.tag(message.uidl)] {
                            toRecord[base] = message.uidl
                            report.alreadyThere += 1
                            continue
                        }
                        toRecord[try await Self.copy(message, from: database, into: target)] = message.uidl
                        report.copied += 1
                    }
                    try target.recordUniqueIDs(toRecord)
                    if verify {
                        let listing = try target.listing()
                        report.differences = Self.compare(
                            maildir: listing.map { MaildropMessage(uniqueID: $0.uniqueID, size: $0.size) },
                            database: try await database.listing(account: account.id)
                        )
                    }
                    progress(report)
                    reports.append(report)
                }
                return reports
            }
        }
    }

    /// One message's chunks into an unnamed spool file, then durably into the Maildir; returns its base name.
    private static func copy(_ message: (id: Int64, uidl: String, chunks: Int), from database: MailDatabase, into target: MaildirImport) async throws -> String {
        var template = Array("/tmp/pop3d-export-XXXXXX".utf8CString)
        let spool = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard spool >= 0 else { throw FileSystemError("mkstemp", path: "/tmp", errno: errno) }
        unlink(String(cString: template))
        defer { close(spool) }
        var size = 0
        for seq in 0..<message.chunks {
            guard let chunk = try await database.chunk(message: message.id, seq: seq) else {
                throw DatabaseError("message \(message.uidl) lost chunk \(seq) during the export")
            }
            try chunk.readableBytesView.withUnsafeBytes { try FileSystem.write(spool, $0, path: "<spool>") }
            size += chunk.readableBytes
        }
        return try target.store(spool: spool, size: size, uniqueID: message.uidl)
    }

    /// What differs between the two listings: UIDLs on one side only, and sizes that disagree.
    static func compare(maildir: [MaildropMessage], database: [String: Int]) -> [String] {
        var differences: [String] = []
        var seen = Set<String>()
        for message in maildir {
            seen.insert(message.uniqueID)
            guard let size = database[message.uniqueID] else {
                differences.append("\(message.uniqueID): only in the Maildir")
                continue
            }
            if size != message.size { differences.append("\(message.uniqueID): \(message.size) octets in the Maildir, \(size) in the database") }
        }
        for uidl in database.keys.sorted() where !seen.contains(uidl) {
            differences.append("\(uidl): only in the database")
        }
        return differences
    }
}
