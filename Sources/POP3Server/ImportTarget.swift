import Logging
import MailStore
import MailStorePostgres
import SystemIO

/// Where `pop3d import` puts a user's messages: the account's Maildir (as root, the process then runs as the mail
/// owner, as `pop3d deliver` does), or the account in PostgreSQL with `storage.backend: postgres`.
public struct ImportTarget: Sendable, CustomStringConvertible {
    public let destination: MaildropImporter.Destination
    public let description: String

    /// Looks `user` up as a delivery would: unknown → `.unknownUser` (exit 67); anything else → `.temporary`.
    public static func open(_ configuration: ServerConfiguration, user: String, logger: Logger) throws(LocalDelivery.Failure) -> ImportTarget {
        guard configuration.storageBackend == .postgres, let settings = configuration.postgres else {
            let maildir = try LocalDelivery(configuration: configuration).openAccount(user).maildir
            return ImportTarget(destination: .maildir(MaildirImport(maildir: maildir, logger: logger)), description: maildir)
        }
        if configuration.usesPasswdFile {
            // The passwd-file decides who exists (as for deliveries); its users get a database account on first use.
            _ = try LocalDelivery(configuration: configuration).passwdRecord(user)
        }
        let outcome = Result { () throws -> (MailDatabase, Int64?) in
            let password = try ServerConfiguration.readDatabasePassword(settings)
            // One handle only finds the account (a handle's pool runs once); the import runs on a second.
            let lookup = try MailDatabase(settings: settings, password: password, logger: logger)
            let account = try runBlocking {
                try await lookup.withRunning { try await $0.accountID(user, create: configuration.usesPasswdFile) }
            }
            return (try MailDatabase(settings: settings, password: password, logger: logger), account)
        }
        switch outcome {
        case .success((let database, let account?)):
            return ImportTarget(destination: .database(database, account: account), description: "\(user)'s maildrop in PostgreSQL")
        case .success((_, nil)):
            throw .unknownUser("unknown user \(user)")
        case .failure(let error):
            throw .temporary("\(error)")
        }
    }

    /// Runs `body` with the destination ready (the database's pool running, for PostgreSQL).
    public func run<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        guard case .database(let database, _) = self.destination else { return try await body() }
        return try await database.withRunning { _ in try await body() }
    }
}
