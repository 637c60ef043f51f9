import Foundation
import Logging
import MailStore
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import Synchronization
import SystemIO

/// A failure of the PostgreSQL backend that is not about one maildrop: the database cannot be reached, the schema
/// is missing or of another version, or its durability settings are refused. Said at start, with what to do.
public struct DatabaseError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The pop3d node's handle on PostgreSQL: a connection pool (`storage.postgres.pool_size`) for queries, one
/// dedicated connection for maildrop locks (`MaildropLocks`), the schema and the start-up checks.
///
/// Run it (`run()`, a ServiceLifecycle service) for as long as it is used.
public final class MailDatabase: Sendable {
    public let settings: PostgresSettings
    let client: PostgresClient
    let locks: MaildropLocks
    let logger: Logger
    /// Ids read by logins' account lookups, for the maildrop open that follows.
    let accountIDs = AccountIDCache()

    public init(settings: PostgresSettings, password: String?, logger: Logger) throws(DatabaseError) {
        self.settings = settings
        self.logger = logger
        let target = try Self.target(settings)
        var configuration: PostgresClient.Configuration
        switch settings.endpoint {
        case .tcp(let host, let port):
            configuration = PostgresClient.Configuration(
                host: host, port: port, username: settings.user, password: password, database: settings.database, tls: target.clientTLS
            )
            configuration.options.tlsServerName = target.serverName
        case .unixSocket(let path):
            configuration = PostgresClient.Configuration(unixSocketPath: path, username: settings.user, password: password, database: settings.database)
        }
        configuration.options.maximumConnections = settings.poolSize
        configuration.options.minimumConnections = 0
        configuration.options.connectTimeout = .seconds(5)
        configuration.options.additionalStartupParameters = Self.startupParameters(settings)
        // The pool's own reports of each failed connection attempt are left out below warning: a failure that
        // matters reaches a session or the start-up check, which say it once, with its cause.
        var background = logger
        background.logLevel = max(logger.logLevel, .warning)
        self.client = PostgresClient(configuration: configuration, backgroundLogger: background)

        var dedicated: PostgresConnection.Configuration
        switch settings.endpoint {
        case .tcp(let host, let port):
            dedicated = PostgresConnection.Configuration(
                host: host, port: port, username: settings.user, password: password, database: settings.database, tls: target.connectionTLS
            )
            dedicated.options.tlsServerName = target.serverName
        case .unixSocket(let path):
            dedicated = PostgresConnection.Configuration(unixSocketPath: path, username: settings.user, password: password, database: settings.database)
        }
        dedicated.options.connectTimeout = .seconds(5)
        dedicated.options.additionalStartupParameters = Self.startupParameters(settings)
        self.locks = MaildropLocks(configuration: dedicated, logger: logger)
    }

    /// Keeps the pool running until cancelled or gracefully shut down; closes the lock connection then.
    public func run() async {
        await self.client.run()
        await self.locks.close()
    }

    /// Runs `body` with the pool running (for one-shot commands: `pop3d db migrate`, `user`, `deliver`).
    public func withRunning<T: Sendable>(_ body: @Sendable (MailDatabase) async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await self.run() }
            defer { group.cancelAll() }
            return try await body(self)
        }
    }

    // MARK: Queries

    /// A query through the pool, waiting for a connection at most `pool_timeout` (then statement_timeout applies
    /// on the server). Every failure is a `MaildropError.temporary` for the session (`-ERR [SYS/TEMP]`), logged
    /// with its cause here.
    func withConnection<T: Sendable>(
        _ operation: String,
        boundedBody: Bool = true,
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        do {
            return try await self.leased(boundedBody: boundedBody, body)
        } catch let error as MaildropError {
            throw error
        } catch let error as DeliveryFailure {
            throw error
        } catch let error as DatabaseError {
            throw error
        } catch {
            self.logger.error("database: \(operation) failed", metadata: ["error": "\(Self.describe(error))"])
            throw MaildropError.temporary("database unavailable")
        }
    }

    /// `body` on a pooled connection. Waiting for the connection is bounded by `pool_timeout` (a database that is
    /// down or a pool that is exhausted answers `[SYS/TEMP]` then); once `body` runs, by `statement_timeout` per
    /// statement on the server, and here by that plus a margin, for a connection whose server went away unheard.
    /// `boundedBody: false` (a delivery streaming its message from the MTA) leaves the body unbounded here: its
    /// statements are still bounded by the server, and a body that committed must never be reported as failed.
    private func leased<T: Sendable>(boundedBody: Bool, _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let started = Flag()
        let (poolTimeout, bodyLimit) = (self.settings.poolTimeout, self.settings.statementTimeout + .seconds(10))
        // One task for the lease and the body, and a timer on an event loop that cancels it if no connection came
        // within pool_timeout (cheaper per statement than a task group with a sleeping child).
        let lease = Task {
            try await self.client.withConnection { connection in
                started.value.store(true, ordering: .releasing)
                return try await boundedBody ? connection.bounded(by: bodyLimit) { try await body(connection) } : body(connection)
            }
        }
        let timer = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(in: TimeAmount(poolTimeout)) {
            if !started.value.load(ordering: .acquiring) { lease.cancel() }
        }
        defer { timer.cancel() }
        do {
            return try await withTaskCancellationHandler { try await lease.value } onCancel: { lease.cancel() }
        } catch {
            if !started.value.load(ordering: .acquiring) { throw DeadlineExceeded(duration: poolTimeout) }
            throw error
        }
    }

    /// As `withConnection`, inside one transaction (committed when `body` returns, rolled back when it throws).
    func withTransaction<T: Sendable>(
        _ operation: String,
        boundedBody: Bool = true,
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        let logger = self.logger
        return try await self.withConnection(operation, boundedBody: boundedBody) { connection in
            do {
                return try await connection.withTransaction(logger: logger) { transaction in try await body(transaction) }
            } catch let error as PostgresTransactionError {
                // Our own refusal inside the transaction (rolled back cleanly) is reported as itself.
                if let inner = error.closureError, error.rollbackError == nil,
                    inner is MaildropError || inner is DeliveryFailure || inner is DatabaseError
                {
                    throw inner
                }
                throw error
            }
        }
    }

    /// The server's words for a PostgreSQL error (its message and SQLSTATE), never the query's bound values.
    static func describe(_ error: any Error) -> String {
        if let psql = error as? PSQLError {
            if let message = psql.serverInfo?[.message] {
                return "\(message) (SQLSTATE \(psql.serverInfo?[.sqlState] ?? "?"))"
            }
            return "\(psql.code)"
        }
        if error is DeadlineExceeded { return "no connection or answer in time (storage.postgres.pool_timeout, statement_timeout)" }
        return "\(error)"
    }

    static func sqlState(_ error: any Error) -> String? {
        (error as? PSQLError)?.serverInfo?[.sqlState]
    }

    // MARK: Schema and start-up checks

    /// The schema version in the database: 0 when pop3d never migrated it.
    public func schemaVersion() async throws -> Int {
        try await self.withConnection("schema check") { connection in try await self.schemaVersion(on: connection) }
    }

    private func schemaVersion(on connection: PostgresConnection) async throws -> Int {
        var exists = false
        for try await present in try await connection.query("SELECT to_regclass('pop3d_schema') IS NOT NULL", logger: self.logger).decode(Bool.self) {
            exists = present
        }
        guard exists else { return 0 }
        var version = 0
        for try await found in try await connection.query("SELECT version FROM pop3d_schema", logger: self.logger).decode(Int.self) {
            version = found
        }
        return version
    }

    /// Applies every missing migration in one transaction (concurrent runs wait on the version table's lock).
    /// Returns the versions before and after.
    public func migrate() async throws -> (from: Int, to: Int) {
        try await self.withTransaction("migration") { connection in
            try await connection.query("CREATE TABLE IF NOT EXISTS pop3d_schema (version integer NOT NULL)", logger: self.logger)
            try await connection.query("LOCK TABLE pop3d_schema IN EXCLUSIVE MODE", logger: self.logger)
            var current: Int?
            for try await found in try await connection.query("SELECT version FROM pop3d_schema", logger: self.logger).decode(Int.self) {
                current = found
            }
            let from = current ?? 0
            guard from <= DatabaseSchema.version else {
                throw DatabaseError("the schema is version \(from), newer than this pop3d's \(DatabaseSchema.version): upgrade pop3d")
            }
            for migration in DatabaseSchema.migrations.dropFirst(from) {
                for statement in migration {
                    try await connection.query(PostgresQuery(unsafeSQL: statement), logger: self.logger)
                }
            }
            var generator = SystemRandomNumberGenerator()
            let penaltyKey = ByteBuffer(bytes: (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
            try await connection.query(
                "INSERT INTO pop3d_secrets (name, value) VALUES ('penalty', \(penaltyKey)) ON CONFLICT (name) DO NOTHING",
                logger: self.logger
            )
            if current == nil {
                try await connection.query("INSERT INTO pop3d_schema (version) VALUES (\(DatabaseSchema.version))", logger: self.logger)
            } else {
                try await connection.query("UPDATE pop3d_schema SET version = \(DatabaseSchema.version)", logger: self.logger)
            }
            return (from, DatabaseSchema.version)
        }
    }

    /// What `pop3d serve` checks before it accepts a connection: the database answers, the schema is this
    /// pop3d's, and a commit is durable when acknowledged. Returns warnings; throws what must stop the start.
    public func startupCheck() async throws -> [String] {
        let version = try await self.schemaVersionReporting()
        if version < DatabaseSchema.version {
            throw DatabaseError(
                version == 0
                    ? "the database has no pop3d schema: run `pop3d db migrate --config FILE` first"
                    : "the schema is version \(version), older than this pop3d's \(DatabaseSchema.version): run `pop3d db migrate --config FILE`"
            )
        }
        if version > DatabaseSchema.version {
            throw DatabaseError("the schema is version \(version), newer than this pop3d's \(DatabaseSchema.version): upgrade pop3d")
        }
        let (synchronousCommit, fsync) = try await self.withConnection("durability check") { connection in
            var synchronousCommit = "", fsync = ""
            for try await value in try await connection.query("SELECT current_setting('synchronous_commit')", logger: self.logger).decode(String.self) {
                synchronousCommit = value
            }
            for try await value in try await connection.query("SELECT current_setting('fsync')", logger: self.logger).decode(String.self) {
                fsync = value
            }
            return (synchronousCommit, fsync)
        }
        var warnings: [String] = []
        if synchronousCommit == "off" {
            let text = "PostgreSQL's synchronous_commit is off for pop3d's sessions: a delivery or DELE acknowledged could be lost if PostgreSQL crashes"
            guard self.settings.allowAsyncCommit else {
                throw DatabaseError(text + "; set it on (ALTER ROLE … SET synchronous_commit = on) or storage.postgres.allow_async_commit: true")
            }
            warnings.append(text + " (allowed by storage.postgres.allow_async_commit)")
        }
        if fsync == "off" {
            warnings.append("PostgreSQL runs with fsync = off: nothing it commits is durable across a power failure")
        }
        return warnings
    }

    /// `schemaVersion` with a start-up error that says what failed (the server's words), not "unavailable".
    private func schemaVersionReporting() async throws -> Int {
        do {
            // pool_timeout alone: at start nothing else waits for a connection, so a longer wait means no database.
            return try await withDeadline(self.settings.poolTimeout) {
                try await self.client.withConnection { connection in try await self.schemaVersion(on: connection) }
            }
        } catch {
            throw DatabaseError("cannot reach PostgreSQL at \(self.settings.endpoint) as \(self.settings.user): \(Self.describe(error))")
        }
    }

    // MARK: Connection set-up

    private struct Target {
        var clientTLS: PostgresClient.Configuration.TLS
        var connectionTLS: PostgresConnection.Configuration.TLS
        var serverName: String?
    }

    private static func target(_ settings: PostgresSettings) throws(DatabaseError) -> Target {
        guard case .tcp(let host, _) = settings.endpoint else {
            return Target(clientTLS: .disable, connectionTLS: .disable, serverName: nil)
        }
        let isIP = (try? SocketAddress(ipAddress: host, port: 0)) != nil
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        switch settings.tls {
        case .disable:
            return Target(clientTLS: .disable, connectionTLS: .disable, serverName: nil)
        case .prefer, .require:
            // libpq's meaning: encrypted, the certificate not checked (verify-full checks it).
            tls.certificateVerification = .none
        case .verifyFull:
            guard let ca = settings.caFile else { throw DatabaseError("storage.postgres.tls verify-full needs storage.postgres.ca_file") }
            tls.trustRoots = .file(ca)
            tls.certificateVerification = isIP ? .noHostnameVerification : .fullVerification
        }
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: tls)
        } catch {
            throw DatabaseError("storage.postgres TLS: \(error)")
        }
        let serverName = isIP ? nil : host
        switch settings.tls {
        case .prefer: return Target(clientTLS: .prefer(tls), connectionTLS: .prefer(context), serverName: serverName)
        default: return Target(clientTLS: .require(tls), connectionTLS: .require(context), serverName: serverName)
        }
    }

    /// Session settings sent at connection start: the statement timeout, and TCP keepalives short enough that
    /// PostgreSQL notices a node cut off (and frees its maildrop locks) within seconds.
    private static func startupParameters(_ settings: PostgresSettings) -> [(String, String)] {
        let milliseconds = settings.statementTimeout.components.seconds * 1000 + settings.statementTimeout.components.attoseconds / 1_000_000_000_000_000
        return [
            ("application_name", "pop3d"),
            ("statement_timeout", "\(milliseconds)"),
            ("tcp_keepalives_idle", "2"),
            ("tcp_keepalives_interval", "1"),
            ("tcp_keepalives_count", "2"),
        ]
    }
}

extension PostgresConnection {
    /// `body`, bounded by `limit`. postgres-nio's queries cannot be cancelled, so when the time is up the connection
    /// is closed, which fails the query in flight at once (`DeadlineExceeded`), where a task-group deadline would
    /// still wait for the query's end. The pool replaces a closed connection; a closed lock connection takes its
    /// locks with it, as a dead one would. Cancelling the calling task does not close the connection.
    func bounded<T: Sendable>(by limit: Duration, _ body: () async throws -> T) async throws -> T {
        let fired = Flag()
        let timer = self.eventLoop.scheduleTask(in: TimeAmount(limit)) {
            fired.value.store(true, ordering: .releasing)
            self.close().whenComplete { _ in }
        }
        defer { timer.cancel() }
        do {
            return try await body()
        } catch {
            if fired.value.load(ordering: .acquiring) { throw DeadlineExceeded(duration: limit) }
            throw error
        }
    }
}

/// A flag set by one task or timer and read by another (a lease started; a deadline fired).
private final class Flag: Sendable {
    let value = Atomic(false)
}

/// The account ids that logins' lookups read, kept for the maildrop open that follows the login so that it need not
/// ask again: each taken once, at most `capacity` kept. Only a hint: the listing checks that the account still
/// exists, and a miss asks by name.
final class AccountIDCache: Sendable {
    static let capacity = 4096
    private let ids = Mutex<[String: Int64]>([:])

    func remember(_ name: String, _ id: Int64) {
        self.ids.withLock {
            if $0.count >= Self.capacity { $0.removeAll(keepingCapacity: true) }
            $0[name] = id
        }
    }

    func take(_ name: String) -> Int64? {
        self.ids.withLock { $0.removeValue(forKey: name) }
    }
}

