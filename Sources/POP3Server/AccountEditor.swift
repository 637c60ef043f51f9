import Accounts
import Logging
import MailStorePostgres
import SASL
import SystemIO

/// `pop3d user add/passwd/del/list` and `pop3d db migrate`, against wherever the configuration keeps the accounts
/// logins are checked against: the passwd-file when there is one (also with `storage.backend: postgres`, where it
/// then authenticates), else PostgreSQL's accounts.
public struct AccountEditor {
    public let configuration: ServerConfiguration

    public init(configuration: ServerConfiguration) {
        self.configuration = configuration
    }

    public func add(user: String, password: String, scheme: PasswordScheme) throws {
        let iterations = self.configuration.scramIterations
        if let accounts = try self.databaseAccounts() {
            try runBlocking { try await accounts.database.withRunning { _ in try await accounts.add(user: user, password: password, scheme: scheme, iterations: iterations) } }
        } else {
            try PasswdFileEditor(path: self.configuration.passwdFile).add(user: user, password: password, scheme: scheme, iterations: iterations)
        }
    }

    public func setPassword(user: String, password: String, scheme: PasswordScheme) throws {
        let iterations = self.configuration.scramIterations
        if let accounts = try self.databaseAccounts() {
            try runBlocking {
                try await accounts.database.withRunning { _ in try await accounts.setPassword(user: user, password: password, scheme: scheme, iterations: iterations) }
            }
        } else {
            try PasswdFileEditor(path: self.configuration.passwdFile).setPassword(user: user, password: password, scheme: scheme, iterations: iterations)
        }
    }

    /// In the database the account's messages go with it; a Maildir is left in place.
    public func delete(user: String) throws {
        if let accounts = try self.databaseAccounts() {
            try runBlocking { try await accounts.database.withRunning { _ in try await accounts.delete(user: user) } }
        } else {
            try PasswdFileEditor(path: self.configuration.passwdFile).delete(user: user)
        }
    }

    public func list() throws -> [String] {
        if let accounts = try self.databaseAccounts() {
            return try runBlocking { try await accounts.database.withRunning { _ in try await accounts.list() } }
        }
        return try PasswdFileEditor(path: self.configuration.passwdFile).list()
    }

    /// `pop3d db migrate`: creates or upgrades the schema; returns the versions before and after.
    public func migrateDatabase() throws -> (from: Int, to: Int) {
        guard let database = try self.database() else {
            throw ConfigurationError(key: "storage.backend", "pop3d db needs storage.backend: postgres")
        }
        return try runBlocking { try await database.withRunning { try await $0.migrate() } }
    }

    private func database() throws -> MailDatabase? {
        guard self.configuration.storageBackend == .postgres, let settings = self.configuration.postgres else { return nil }
        var logger = Logger(label: "pop3d")
        logger.logLevel = .error
        return try MailDatabase(settings: settings, password: try ServerConfiguration.readDatabasePassword(settings), logger: logger)
    }

    private func databaseAccounts() throws -> DatabaseAccounts? {
        guard !self.configuration.usesPasswdFile else { return nil }
        return try self.database().map {
            DatabaseAccounts(database: $0, threadPool: .singleton, scramIterations: self.configuration.scramIterations, scramSecret: nil)
        }
    }
}
