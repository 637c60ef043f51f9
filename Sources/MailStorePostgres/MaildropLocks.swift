import Logging
import MailStore
import PostgresNIO
import SystemIO

/// The maildrop locks of one pop3d node, held as PostgreSQL advisory locks on one dedicated connection (not a
/// pooled one): a lock lives exactly as long as that database session, so a node killed with `kill -9`, or cut off
/// from the database (TCP keepalives of 2 s + 2 × 1 s), loses its locks with its session, and the account can be
/// opened on another node. Never a lease that a paused process could outlive.
///
/// Advisory locks are re-entrant within one database session, so the node also keeps its own table: a second
/// session for the same account on this node is refused here. Each lock carries the backend process id of the
/// connection that took it; the UPDATE commit checks, in its own transaction, that this backend still holds it
/// (`pg_locks`), so a session whose lock was lost with a connection can no longer delete.
actor MaildropLocks {
    struct Token: Sendable, Equatable {
        let account: Int64
        let backend: Backend
        let serial: UInt64
    }

    /// The database session a lock lives in: its backend pid and start time (a pid alone can be reused after a
    /// PostgreSQL restart by another node's new session).
    struct Backend: Sendable, Equatable {
        let pid: Int32
        let started: Double
    }

    private let configuration: PostgresConnection.Configuration
    private let logger: Logger
    private var connection: PostgresConnection?
    /// The connection being made, if one is.
    private var connecting: Task<(PostgresConnection, Backend), any Error>?
    private var backend = Backend(pid: 0, started: 0)
    private var held: [Int64: UInt64] = [:]
    private var nextSerial: UInt64 = 1
    private var nextConnectionID = 1

    /// Longest a lock query may take. A connection whose server went away can leave a query unanswered until TCP
    /// gives up; the lock (and the session waiting for it) must not wait that long.
    static let queryDeadline = Duration.seconds(5)

    init(configuration: PostgresConnection.Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Takes `account`'s lock or throws `MaildropError.inUse` (held here or by another node), or `.temporary`
    /// (the database cannot be reached).
    func acquire(_ account: Int64) async throws -> Token {
        guard let key = Int32(exactly: account) else { throw MaildropError.permanent("account id out of range") }
        guard self.held[account] == nil else { throw MaildropError.inUse }
        let serial = self.nextSerial
        self.nextSerial += 1
        // Reserved before the first suspension point, so that a second acquire for the account cannot slip in.
        self.held[account] = serial
        var used: PostgresConnection?
        do {
            let (connection, backend) = try await self.currentConnection()
            used = connection
            let logger = self.logger
            let granted = try await connection.bounded(by: Self.queryDeadline) {
                try await connection.rows(Statements.TryLock(key: key), logger: logger).first ?? false
            }
            guard granted else {
                self.held[account] = nil
                throw MaildropError.inUse
            }
            return Token(account: account, backend: backend, serial: serial)
        } catch let error as MaildropError {
            throw error
        } catch {
            if self.held[account] == serial { self.held[account] = nil }
            self.dropConnection(used, after: error)
            throw MaildropError.temporary("maildrop lock unavailable")
        }
    }

    /// Gives the lock back (nothing when the token's connection is gone: the lock went with it).
    func release(_ token: Token) async {
        guard self.held[token.account] == token.serial else { return }
        self.held[token.account] = nil
        guard let connection = self.connection, !connection.isClosed, self.backend == token.backend, let key = Int32(exactly: token.account) else {
            return
        }
        let logger = self.logger
        do {
            _ = try await connection.bounded(by: Self.queryDeadline) {
                try await connection.rows(Statements.Unlock(key: key), logger: logger).first ?? false
            }
        } catch {
            self.dropConnection(connection, after: error)
        }
    }

    func close() async {
        let connection = self.connection
        self.connection = nil
        self.held = [:]
        try? await connection?.close()
    }

    /// The SQL that is true only while `token`'s backend still holds its lock; run inside the commit's transaction.
    static func stillHeld(_ token: Token) -> PostgresQuery {
        """
        SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.classid::bigint = \(Int64(DatabaseSchema.lockClass)) AND l.objid::bigint = \(token.account)
          AND l.pid = \(token.backend.pid) AND extract(epoch FROM a.backend_start)::float8 = \(token.backend.started)
        """
    }

    private func currentConnection() async throws -> (PostgresConnection, Backend) {
        if let connection = self.connection, !connection.isClosed { return (connection, self.backend) }
        // One connection at a time: acquires that arrive while it is being made wait for the same one. (Each making
        // its own would leave locks on connections nobody releases them on: the account stays [IN-USE].)
        if let connecting = self.connecting { return try await connecting.value }
        if self.connection != nil {
            // The old session, and every lock it held, is gone: sessions holding them fail at commit.
            self.logger.warning("maildrop lock connection lost; PostgreSQL released its locks, and sessions that held them cannot commit")
            self.connection = nil
        }
        let id = self.nextConnectionID
        self.nextConnectionID += 1
        let (configuration, logger) = (self.configuration, self.logger)
        let connecting = Task {
            try await withDeadline(Self.queryDeadline) {
                let connection = try await PostgresConnection.connect(configuration: configuration, id: -id, logger: logger)
                // Made just as the deadline fired: nobody would use, or close, it.
                guard !Task.isCancelled else {
                    connection.close().whenComplete { _ in }
                    throw DeadlineExceeded(duration: Self.queryDeadline)
                }
                return try await connection.bounded(by: Self.queryDeadline) {
                    var backend = Backend(pid: 0, started: 0)
                    let rows = try await connection.query(
                        "SELECT pid, extract(epoch FROM backend_start)::float8 FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                        logger: logger
                    )
                    for try await (pid, started) in rows.decode((Int32, Double).self) { backend = Backend(pid: pid, started: started) }
                    return (connection, backend)
                }
            }
        }
        self.connecting = connecting
        defer { self.connecting = nil }
        let (connection, backend) = try await connecting.value
        self.connection = connection
        self.backend = backend
        return (connection, backend)
    }

    /// Closes `failing` after a query on it failed; it stops being the node's lock connection only if it still is
    /// (a late failure of a replaced connection must not drop the new one, and the locks on it).
    private func dropConnection(_ failing: PostgresConnection?, after error: any Error) {
        self.logger.error("maildrop lock connection failed", metadata: ["error": "\(MailDatabase.describe(error))"])
        guard let failing else { return }
        if let current = self.connection, current === failing { self.connection = nil }
        failing.close().whenComplete { _ in }
    }
}
