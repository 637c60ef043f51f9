import Accounts
import Foundation
import Logging
import NIOPosix
import PostgresNIO
import SASL
import Synchronization

/// Accounts kept in PostgreSQL (`storage.backend: postgres` with no `passwd_file`): the same stored fields and
/// schemes as the passwd-file (SCRAM too), no uid/gid. Checks run exactly as for the passwd-file
/// (`StoredCredentials`): an unknown user costs the hash most accounts have, and gets stable SCRAM dummy keys.
public final class DatabaseAccounts: CredentialVerifier {
    public let database: MailDatabase
    private let threadPool: NIOThreadPool
    private let limiter: ConcurrencyLimiter
    private let scramIterations: Int
    private let scramSecret: [UInt8]
    /// Timing cover derived from a sample of accounts, refreshed at most once a minute.
    private let credentials: Mutex<(refreshed: ContinuousClock.Instant?, value: StoredCredentials)>

    /// Accounts sampled for the timing cover (the most recent ones).
    static let sampleSize = 1000

    public init(database: MailDatabase, threadPool: NIOThreadPool, scramIterations: Int, scramSecret: [UInt8]?) {
        self.database = database
        self.threadPool = threadPool
        self.limiter = ConcurrencyLimiter(limit: max(1, System.coreCount))
        self.scramIterations = scramIterations
        var generator = SystemRandomNumberGenerator()
        self.scramSecret = scramSecret ?? (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        self.credentials = Mutex((nil, StoredCredentials(records: [])))
    }

    public func authenticate(user: String, password: String) async throws -> AuthenticationResult {
        let record = try await self.lookup(user: user)
        let credentials = try await self.currentCredentials()
        return try await self.limiter.withPermit {
            try await self.threadPool.runIfActive { credentials.authenticate(password: password, record: record) }
        }
    }

    public func lookup(user: String) async throws -> UserRecord? {
        guard UserName.isValid(user) else { return nil }
        let database = self.database
        let found = try await database.withConnection("account lookup") { connection in
            try await connection.rows(Statements.Account(name: user), logger: database.logger).first
        }
        guard let (id, password) = found else { return nil }
        database.accountIDs.remember(user, id)
        return UserRecord(name: user, passwordField: password)
    }

    public func scramKeys(user: String, algorithm: SCRAMAlgorithm) async throws -> SCRAMLookup {
        let record = try await self.lookup(user: user)
        let credentials = try await self.currentCredentials()
        let (iterations, secret) = (self.scramIterations, self.scramSecret)
        return try await self.limiter.withPermit {
            try await self.threadPool.runIfActive {
                credentials.scramLookup(user: user, record: record, algorithm: algorithm, iterations: iterations, secret: secret)
            }
        }
    }

    private func currentCredentials() async throws -> StoredCredentials {
        let now = ContinuousClock.now
        let (refreshed, value) = self.credentials.withLock { ($0.refreshed, $0.value) }
        if let refreshed, refreshed.duration(to: now) < .seconds(60) { return value }
        let database = self.database
        let sample = try await database.withConnection("account sample") { connection in
            var records: [UserRecord] = []
            let rows = try await connection.query(
                "SELECT name, password FROM accounts ORDER BY id DESC LIMIT \(Self.sampleSize)",
                logger: database.logger
            )
            for try await (name, password) in rows.decode((String, String).self) {
                records.append(UserRecord(name: name, passwordField: password))
            }
            return records
        }
        let fresh = StoredCredentials(records: sample)
        self.credentials.withLock { $0 = (now, fresh) }
        return fresh
    }

    // MARK: Administration (`pop3d user` with the postgres backend)

    public enum EditError: Error, Equatable, CustomStringConvertible {
        case exists(String)
        case unknown(String)
        case invalidName(String)

        public var description: String {
            switch self {
            case .exists(let name): "user \(name) already exists"
            case .unknown(let name): "no user \(name)"
            case .invalidName(let reason): reason
            }
        }
    }

    public func add(user: String, password: String, scheme: PasswordScheme, iterations: Int) async throws {
        if let problem = UserName.problem(user) { throw EditError.invalidName(problem) }
        let field = try StoredCredentials.field(password: password, scheme: scheme, iterations: iterations)
        let database = self.database
        let added = try await database.withConnection("user add") { connection in
            var inserted = false
            let rows = try await connection.query(
                "INSERT INTO accounts (name, password) VALUES (\(user), \(field)) ON CONFLICT (name) DO NOTHING RETURNING id",
                logger: database.logger
            )
            for try await _ in rows.decode(Int64.self) { inserted = true }
            return inserted
        }
        guard added else { throw EditError.exists(user) }
    }

    public func setPassword(user: String, password: String, scheme: PasswordScheme, iterations: Int) async throws {
        let field = try StoredCredentials.field(password: password, scheme: scheme, iterations: iterations)
        try await self.update(user, "password change") { connection, logger in
            try await connection.query("UPDATE accounts SET password = \(field) WHERE name = \(user) RETURNING id", logger: logger)
        }
    }

    /// Removes the account and, with it, its messages.
    public func delete(user: String) async throws {
        try await self.update(user, "user del") { connection, logger in
            try await connection.query("DELETE FROM accounts WHERE name = \(user) RETURNING id", logger: logger)
        }
    }

    public func list() async throws -> [String] {
        let database = self.database
        return try await database.withConnection("user list") { connection in
            var names: [String] = []
            for try await name in try await connection.query("SELECT name FROM accounts ORDER BY name", logger: database.logger).decode(String.self) {
                names.append(name)
            }
            return names
        }
    }

    private func update(
        _ user: String,
        _ operation: String,
        _ body: @escaping @Sendable (PostgresConnection, Logger) async throws -> PostgresRowSequence
    ) async throws {
        let database = self.database
        let changed = try await database.withConnection(operation) { connection in
            var changed = false
            for try await _ in try await body(connection, database.logger).decode(Int64.self) { changed = true }
            return changed
        }
        guard changed else { throw EditError.unknown(user) }
    }
}
