import Accounts
import Foundation
import Logging
import MailStore
import MailStorePostgres
import Privileges
import SystemIO

/// One message into one account's Maildir, as `pop3d deliver` does it for an MTA: the account looked up in the
/// passwd-file, its quota applied, root dropped to the mail owner, and success only once the message is durable
/// (tmp, fsync, link into new/, directory fsync). Each failure says whether the MTA should retry.
public struct LocalDelivery {
    /// Why a delivery failed; `pop3d deliver` turns each into its sysexits(3) status.
    public enum Failure: Error, Equatable, CustomStringConvertible {
        /// No such account (EX_NOUSER, 67).
        case unknownUser(String)
        /// Larger than the size limit given (EX_CANTCREAT, 73).
        case tooLarge(String)
        /// Over the account's quota; nothing stored (EX_NOPERM, 77, as `dovecot-lda -e`).
        case quotaExceeded(String)
        /// Anything worth retrying: configuration, I/O, a full disk (EX_TEMPFAIL, 75).
        case temporary(String)

        public var description: String {
            switch self {
            case .unknownUser(let text), .tooLarge(let text), .quotaExceeded(let text), .temporary(let text): text
            }
        }
    }

    public let configuration: ServerConfiguration

    public init(configuration: ServerConfiguration) {
        self.configuration = configuration
    }

    /// `user`'s passwd-file record and Maildir; as root, the process then runs as the mail owner (see `dropRoot`).
    /// Call it on the main thread before any other thread could act as root.
    public func openAccount(_ user: String) throws(Failure) -> (record: UserRecord, maildir: String) {
        let (record, passwd) = try self.passwdRecord(user)
        let path: String
        do {
            path = try MaildirLocator(template: self.configuration.maildirTemplate).path(for: record)
        } catch {
            throw .temporary("no maildir for \(user): \(error)")
        }
        if geteuid() == 0 {
            try self.dropRoot(for: record, path: path, records: passwd.records)
        }
        return (record, path)
    }

    /// `user`'s passwd-file record (and the file), or `.unknownUser`.
    public func passwdRecord(_ user: String) throws(Failure) -> (UserRecord, PasswdFile) {
        let passwd: PasswdFile
        do {
            passwd = try PasswdFile.parse(
                String(contentsOfFile: self.configuration.passwdFile, encoding: .utf8),
                path: self.configuration.passwdFile
            )
        } catch {
            throw .temporary("configuration: \(error)")
        }
        guard let record = passwd.record(named: user) else { throw .unknownUser("unknown user \(user)") }
        return (record, passwd)
    }

    /// Delivers what `descriptor` holds (to its end) to `user`; returns the new file's name (or, in PostgreSQL,
    /// the message's row id).
    public func deliver(user: String, readingFrom descriptor: Int32, maximumSize: Int?) throws(Failure) -> String {
        if self.configuration.storageBackend == .postgres, let settings = self.configuration.postgres {
            return try self.deliverToDatabase(settings, user: user, readingFrom: descriptor, maximumSize: maximumSize)
        }
        let (record, path) = try self.openAccount(user)
        let quota: MaildirQuota
        do {
            quota = try MaildirQuota(extraFields: record.extraFields)
        } catch {
            throw .temporary("quota rule of \(user): \(error)")
        }
        do {
            return try MaildirDelivery.deliver(.stream(descriptor), toMaildir: path, user: user, quota: quota, maximumSize: maximumSize)
        } catch {
            switch error {
            case .tooLarge(let text): throw .tooLarge(text)
            case .quotaExceeded(let text): throw .quotaExceeded(text)
            case .temporary(let text): throw .temporary(text)
            }
        }
    }

    /// One message into PostgreSQL, acknowledged once its transaction has committed. The account must be in the
    /// database, or in the passwd-file when one is configured (its row is then made on first use).
    private func deliverToDatabase(_ settings: PostgresSettings, user: String, readingFrom descriptor: Int32, maximumSize: Int?) throws(Failure) -> String {
        let configuration = self.configuration
        if configuration.usesPasswdFile {
            // The passwd-file decides who exists; its users get a database account on first use.
            _ = try self.passwdRecord(user)
        }
        let result = Result { () throws -> Result<String, Failure> in
            var logger = Logger(label: "pop3d.deliver")
            logger.logLevel = .error
            let database = try MailDatabase(settings: settings, password: try ServerConfiguration.readDatabasePassword(settings), logger: logger)
            return try runBlocking {
                try await database.withRunning { database in
                    guard let account = try await database.accountID(user, create: configuration.usesPasswdFile) else {
                        return .failure(.unknownUser("unknown user \(user)"))
                    }
                    switch await database.deliverResult(account: account, maximumSize: maximumSize, bytes: .stream(descriptor)) {
                    case .success(let id): return .success("message \(id)")
                    case .failure(.tooLarge(let text)): return .failure(.tooLarge(text))
                    case .failure(.quotaExceeded(let text)): return .failure(.quotaExceeded(text))
                    case .failure(.temporary(let text)): return .failure(.temporary(text))
                    }
                }
            }
        }
        switch result {
        case .success(let outcome): return try outcome.get()
        case .failure(let error): throw .temporary("\(error)")
        }
    }

    /// As root (an MTA's local delivery), write as the mail owner: the account's uid/gid when the passwd-file gives
    /// them, else the server's `user`/shared uid, so that the unprivileged server can read the files.
    private func dropRoot(for record: UserRecord, path: String, records: [UserRecord]) throws(Failure) {
        do {
            let identity: PrivilegeDrop.Identity?
            if let uid = record.uid, let gid = record.gid, uid != 0 {
                // The same rule as the server's mail workers: never a system account.
                let owner = MailOwner(uid: uid, gid: gid)
                guard PrivilegeSeparation.allows(owner, firstValidUID: self.configuration.firstValidUID) else {
                    throw PrivilegeDrop.Failure(
                        description: "\(record.name)'s uid \(uid) / gid \(gid) is below first_valid_uid \(self.configuration.firstValidUID) or root's"
                    )
                }
                identity = owner
            } else if let configured = try? PrivilegeDrop.target(user: self.configuration.user, group: self.configuration.group, records: records) {
                identity = configured
            } else {
                // Neither: write as the owner of the Maildir (or of its nearest existing folder), so a root-run
                // development set-up keeps working and a vmail-owned tree stays vmail-owned.
                identity = PrivilegeDrop.owner(ofNearestExisting: path)
            }
            if let identity, identity.uid != 0 { try PrivilegeDrop.drop(to: identity) }
        } catch {
            throw .temporary("cannot drop root privileges: \(error)")
        }
    }
}
