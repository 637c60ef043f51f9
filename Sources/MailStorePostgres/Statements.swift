import Logging
import NIOCore
import PostgresNIO

/// The statements of the hot paths (login, listing, RETR, the maildrop lock), prepared once per connection by
/// postgres-nio and then only bound and executed: PostgreSQL parses and plans each once per connection instead of
/// once per call. Everything else is an ordinary query.
enum Statements {
    /// SQLSTATEs a statement answers with on purpose, which leave the connection as it was: `pop3d_listing`'s
    /// no_data_found for an account that is gone.
    static let ownAnswers: Set<String> = ["P0002"]

    /// `name`'s account: id and stored password field.
    struct Account: PostgresPreparedStatement {
        static let sql = "SELECT id, password FROM accounts WHERE name = $1"
        typealias Row = (Int64, String)
        let name: String
        func makeBindings() throws -> PostgresBindings { try PostgresBindings(self.name) }
        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }

    /// The maildrop listing, taken after any commit of the account in flight (`pop3d_listing`, schema version 4).
    struct Listing: PostgresPreparedStatement {
        static let sql = "SELECT m_id, m_uidl, m_size, m_chunks FROM pop3d_listing($1, $2)"
        typealias Row = (Int64, String, Int64, Int32)
        let account: Int64
        let limit: Int32
        func makeBindings() throws -> PostgresBindings { try PostgresBindings(self.account, self.limit) }
        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }

    /// One stored chunk of a message body.
    struct Chunk: PostgresPreparedStatement {
        static let sql = "SELECT data FROM message_chunks WHERE message_id = $1 AND seq = $2"
        typealias Row = ByteBuffer
        let message: Int64
        let seq: Int32
        func makeBindings() throws -> PostgresBindings { try PostgresBindings(self.message, self.seq) }
        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(ByteBuffer.self) }
    }

    /// Several stored chunks at once (the read-ahead): rows for those of the (message, seq) pairs that exist.
    struct Chunks: PostgresPreparedStatement {
        static let sql = """
            SELECT c.message_id, c.seq, c.data FROM unnest($1::bigint[], $2::integer[]) AS k (message_id, seq)
            JOIN message_chunks c ON c.message_id = k.message_id AND c.seq = k.seq
            """
        typealias Row = (Int64, Int32, ByteBuffer)
        let messages: [Int64]
        let seqs: [Int32]
        func makeBindings() throws -> PostgresBindings { try PostgresBindings(self.messages, self.seqs) }
        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }

    /// The shared auth penalty's admission step (see `SharedPenalty.admit`).
    struct PenaltyAdmit: PostgresPreparedStatement {
        static let sql = """
            UPDATE auth_penalty
            SET next_slot = greatest(now() + (ARRAY[0, 2, 4, 8, 15])[least(failures, 4) + 1] * interval '1 second', next_slot)
                + (ARRAY[0, 2, 4, 8, 15])[least(failures, 4) + 1] * interval '1 second'
            WHERE address = $1 AND last_failure > now() - interval '1 hour'
            RETURNING failures,
                (extract(epoch FROM next_slot - now()) - (ARRAY[0, 2, 4, 8, 15])[least(failures, 4) + 1])::float8
            """
        typealias Row = (Int32, Double)
        let address: String
        func makeBindings() throws -> PostgresBindings { try PostgresBindings(self.address) }
        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }

    /// Takes a maildrop lock if free (session advisory lock, class `DatabaseSchema.lockClass`).
    struct TryLock: PostgresPreparedStatement {
        static let sql = "SELECT pg_try_advisory_lock(\(DatabaseSchema.lockClass), $1)"
        typealias Row = Bool
        let key: Int32
        func makeBindings() throws -> PostgresBindings { try PostgresBindings(self.key) }
        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Bool.self) }
    }

    /// Gives a maildrop lock back.
    struct Unlock: PostgresPreparedStatement {
        static let sql = "SELECT pg_advisory_unlock(\(DatabaseSchema.lockClass), $1)"
        typealias Row = Bool
        let key: Int32
        func makeBindings() throws -> PostgresBindings { try PostgresBindings(self.key) }
        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Bool.self) }
    }
}

extension PostgresBindings {
    /// Bindings of `values`, in order.
    init(_ values: any PostgresEncodable...) throws {
        self.init(capacity: values.count)
        for value in values { try self.append(value) }
    }
}

extension PostgresConnection {
    /// The rows of a prepared statement, all read.
    ///
    /// postgres-nio keeps a failed preparation's error for as long as the connection lives: once a preparation was
    /// cancelled by statement_timeout (say, waiting for a locked table), every later use of the statement on that
    /// connection would fail the same way. So a failure closes the connection (the pool makes a new one), unless it
    /// is the statement's own answer (`Statements.ownAnswers`).
    func rows<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> [Statement.Row] {
        do {
            var rows: [Statement.Row] = []
            for try await row in try await self.execute(statement, logger: logger) { rows.append(row) }
            return rows
        } catch {
            if !Statements.ownAnswers.contains(MailDatabase.sqlState(error) ?? "") { self.close().whenComplete { _ in } }
            throw error
        }
    }
}
