import MailStore
import NIOCore
import PostgresNIO
import Synchronization
import SystemIO

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Where a delivery's bytes come from, read in pieces of at most one stored chunk each.
public struct DeliveryBytes: Sendable {
    let next: @Sendable (Int) async throws -> [UInt8]?

    /// The bytes of a message in another store (`pop3d migrate maildir`), regrouped into chunks.
    public static func content(_ content: MessageContent) -> DeliveryBytes {
        let reader = ContentReader(content.makeAsyncIterator())
        return DeliveryBytes { limit in try await reader.next(limit) }
    }

    /// Everything `descriptor` holds, to its end (standard input for `pop3d deliver`).
    public static func stream(_ descriptor: Int32) -> DeliveryBytes {
        DeliveryBytes { limit in
            var bytes = [UInt8](repeating: 0, count: limit)
            var filled = 0
            while filled < limit {
                let count = try bytes.withUnsafeMutableBytes { buffer in
                    try FileSystem.read(descriptor, into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]), path: "<input>")
                }
                if count == 0 { break }
                filled += count
            }
            return filled == 0 ? nil : Array(bytes[..<filled])
        }
    }
}

extension DeliveryBytes {
    /// `prefix` (the trace headers of this copy), then `size` octets of a spool file read with pread(2) from offset
    /// 0 (LMTP: one spool, a copy per recipient).
    public static func spool(prefix: [UInt8], descriptor: Int32, size: Int) -> DeliveryBytes {
        let position = Mutex<(prefixSent: Bool, offset: Int)>((false, 0))
        return DeliveryBytes { limit in
            var out: [UInt8] = []
            if position.withLock({ state in defer { state.prefixSent = true }; return !state.prefixSent }) {
                out = prefix
            }
            var offset = position.withLock { $0.offset }
            var buffer = [UInt8](repeating: 0, count: max(limit, 1))
            while out.count < limit, offset < size {
                let want = min(limit - out.count, size - offset)
                let count = try buffer.withUnsafeMutableBytes { raw in
                    try FileSystem.pread(descriptor, into: UnsafeMutableRawBufferPointer(rebasing: raw[..<want]), at: UInt64(offset), path: "<spool>")
                }
                guard count > 0 else { throw DeliveryFailure.temporary("the spool file ended early") }
                out += buffer[..<count]
                offset += count
            }
            position.withLock { $0.offset = offset }
            return out.isEmpty ? nil : out
        }
    }
}

/// LMTP's delivery side for the PostgreSQL backend: each copy is one transaction, acknowledged (250) only after it
/// committed. The account's row is made on first use for a user the passwd-file knows; the account's quota is the
/// database's (`accounts.quota_bytes`, `quota_messages`).
public struct PostgresDeliveryTarget: DeliveryTarget {
    let database: MailDatabase
    let createsAccounts: Bool

    public init(database: MailDatabase, createsAccounts: Bool) {
        self.database = database
        self.createsAccounts = createsAccounts
    }

    public func deliver(_ request: DeliveryRequest) async throws(DeliveryFailure) -> String {
        let account: Int64?
        do {
            account = try await self.database.accountID(request.user, create: self.createsAccounts)
        } catch {
            throw .temporary("account lookup failed: \(error)")
        }
        guard let account else { throw .temporary("no account \(request.user) in the database") }
        let id = try await self.database.deliver(
            account: account,
            maximumSize: request.maximumSize,
            bytes: .spool(prefix: request.prefix, descriptor: request.spool, size: request.size)
        )
        return "message \(id)"
    }
}

extension MailDatabase {
    /// The id of `user`'s account; with `create`, an account row is made for a user the passwd-file knows (its
    /// password field `!`: the database cannot be used to log in as it).
    public func accountID(_ user: String, create: Bool) async throws -> Int64? {
        try await self.withConnection("account") { connection in
            func find() async throws -> Int64? {
                try await connection.rows(Statements.Account(name: user), logger: self.logger).first?.0
            }
            if let id = try await find() { return id }
            guard create else { return nil }
            try await connection.query(
                "INSERT INTO accounts (name, password) VALUES (\(user), '!') ON CONFLICT (name) DO NOTHING",
                logger: self.logger
            )
            return try await find()
        }
    }

    /// `deliver` as a result value.
    public func deliverResult(account: Int64, maximumSize: Int?, bytes: DeliveryBytes, uidl: String? = nil) async -> Result<Int64, DeliveryFailure> {
        do {
            return .success(try await self.deliver(account: account, maximumSize: maximumSize, bytes: bytes, uidl: uidl))
        } catch {
            return .failure(error)
        }
    }

    /// Stores one message for `account` in one transaction and returns its id once PostgreSQL has committed it (the
    /// delivery is durable then: `synchronous_commit` is checked at start). Over `maximumSize` or the account's
    /// quota (`accounts.quota_bytes`, `quota_messages`) nothing is stored. Memory: one chunk.
    public func deliver(account: Int64, maximumSize: Int?, bytes: DeliveryBytes, uidl: String? = nil) async throws(DeliveryFailure) -> Int64 {
        let chunkSize = DatabaseSchema.chunkSize
        let logger = self.logger
        do {
            return try await self.withTransaction("delivery", boundedBody: false) { connection in
                // Deliveries to one account are counted against its quota one at a time (a transaction-level advisory
                // lock: sessions listing or committing the account do not wait for a delivery in flight).
                guard let key = Int32(exactly: account) else { throw DeliveryFailure.temporary("account id out of range") }
                try await connection.query("SELECT pg_advisory_xact_lock(\(DatabaseSchema.quotaLockClass), \(key))", logger: logger)
                var quota: (bytes: Int64?, messages: Int64?)?
                for try await limits in try await connection.query(
                    "SELECT quota_bytes, quota_messages FROM accounts WHERE id = \(account)",
                    logger: logger
                ).decode((Int64?, Int64?).self) {
                    quota = limits
                }
                guard let quota else { throw DeliveryFailure.temporary("the account was removed during delivery") }
                var room: Int64?
                if quota.bytes != nil || quota.messages != nil {
                    var used: (octets: Int64, count: Int64) = (0, 0)
                    for try await usage in try await connection.query(
                        "SELECT coalesce(sum(octets), 0)::bigint, count(*) FROM messages WHERE account_id = \(account)",
                        logger: logger
                    ).decode((Int64, Int64).self) {
                        used = usage
                    }
                    if let messages = quota.messages, used.count >= messages {
                        throw DeliveryFailure.quotaExceeded("quota exceeded: \(used.count) of \(messages) messages")
                    }
                    if let limit = quota.bytes {
                        guard used.octets < limit else { throw DeliveryFailure.quotaExceeded("quota exceeded: \(used.octets) of \(limit) bytes used") }
                        room = limit - used.octets
                    }
                }
                var id: Int64 = 0
                for try await inserted in try await connection.query(
                    "INSERT INTO messages (account_id, uidl, size, octets, chunks) VALUES (\(account), \(uidl), 0, 0, 0) RETURNING id",
                    logger: logger
                ).decode(Int64.self) {
                    id = inserted
                }
                var counter = MessageSize.Counter()
                var seq: Int32 = 0
                while let chunk = try await bytes.next(chunkSize) {
                    counter.update(chunk)
                    if let maximumSize, counter.octets > maximumSize {
                        throw DeliveryFailure.tooLarge("message too large (limit \(maximumSize) bytes)")
                    }
                    if let room, counter.octets > room {
                        throw DeliveryFailure.quotaExceeded("quota exceeded: the message is larger than the \(room) bytes left; nothing was stored")
                    }
                    try await connection.query(
                        "INSERT INTO message_chunks (message_id, seq, data) VALUES (\(id), \(seq), \(ByteBuffer(bytes: chunk)))",
                        logger: logger
                    )
                    seq += 1
                }
                try await connection.query(
                    "UPDATE messages SET size = \(Int64(counter.pop3Size)), octets = \(Int64(counter.octets)), chunks = \(seq) WHERE id = \(id)",
                    logger: logger
                )
                return id
            }
        } catch let failure as DeliveryFailure {
            throw failure
        } catch {
            throw .temporary("delivery failed, nothing was stored: \(error)")
        }
    }
}

/// Pulls a message's chunks one at a time and hands them out regrouped. Used by one delivery, sequentially.
private final class ContentReader: @unchecked Sendable {
    // @unchecked: `next` is called by one delivery at a time, never concurrently (the transaction awaits each call).
    private var iterator: MessageContent.AsyncIterator
    private var pending: [UInt8] = []
    private var ended = false

    init(_ iterator: MessageContent.AsyncIterator) {
        self.iterator = iterator
    }

    func next(_ limit: Int) async throws -> [UInt8]? {
        while self.pending.count < limit, !self.ended {
            if let chunk = try await self.iterator.next() {
                self.pending += chunk.readableBytesView
            } else {
                self.ended = true
            }
        }
        guard !self.pending.isEmpty else { return nil }
        let piece = Array(self.pending.prefix(limit))
        self.pending.removeFirst(piece.count)
        return piece
    }
}

extension MailDatabase {
    /// The account `name`, made with `passwordField` if it is not there yet (an existing account keeps its
    /// password): `pop3d migrate maildir` runs again without changing what it already copied.
    public func ensureAccount(_ name: String, passwordField: String) async throws -> Int64 {
        try await self.withConnection("account") { connection in
            try await connection.query(
                """
                INSERT INTO accounts (name, password) VALUES (\(name), \(passwordField))
                ON CONFLICT (name) DO UPDATE SET password = EXCLUDED.password WHERE accounts.password = '!'
                """,
                logger: self.logger
            )
            var id: Int64?
            for try await found in try await connection.query("SELECT id FROM accounts WHERE name = \(name)", logger: self.logger).decode(Int64.self) {
                id = found
            }
            guard let id else { throw DatabaseError("account \(name) vanished while it was being made") }
            return id
        }
    }

    /// UIDL → POP3 size of every message of `account`.
    public func listing(account: Int64) async throws -> [String: Int] {
        try await self.withConnection("listing") { connection in
            var listing: [String: Int] = [:]
            let rows = try await connection.query(
                "SELECT \(unescaped: DatabaseSchema.uidlExpression), size FROM messages WHERE account_id = \(account)",
                logger: self.logger
            )
            for try await (uidl, size) in rows.decode((String, Int64).self) { listing[uidl] = Int(size) }
            return listing
        }
    }
}

extension MailDatabase {
    /// Every account: name and stored password field.
    public func accounts() async throws -> [(id: Int64, name: String, passwordField: String)] {
        try await self.withConnection("accounts") { connection in
            var accounts: [(Int64, String, String)] = []
            for try await row in try await connection.query("SELECT id, name, password FROM accounts ORDER BY id", logger: self.logger)
                .decode((Int64, String, String).self)
            {
                accounts.append(row)
            }
            return accounts
        }
    }

    /// Every message of `account`: id, UIDL, chunk count, in delivery order.
    public func messages(account: Int64) async throws -> [(id: Int64, uidl: String, chunks: Int)] {
        try await self.withConnection("messages") { connection in
            var messages: [(Int64, String, Int)] = []
            let rows = try await connection.query(
                "SELECT id, \(unescaped: DatabaseSchema.uidlExpression), chunks FROM messages WHERE account_id = \(account) ORDER BY id",
                logger: self.logger
            )
            for try await (id, uidl, chunks) in rows.decode((Int64, String, Int32).self) { messages.append((id, uidl, Int(chunks))) }
            return messages
        }
    }

    /// The chunks `wanted` (message id, seq), in one query: each one's data, or nil where none is stored.
    func chunks(_ wanted: [(Int64, Int32)]) async throws -> [ByteBuffer?] {
        let statement = Statements.Chunks(messages: wanted.map(\.0), seqs: wanted.map(\.1))
        let rows = try await self.withConnection("message read") { connection in
            try await connection.rows(statement, logger: self.logger)
        }
        var found: [Int64: [Int32: ByteBuffer]] = [:]
        for (message, seq, data) in rows { found[message, default: [:]][seq] = data }
        return wanted.map { found[$0.0]?[$0.1] }
    }

    /// Chunk `seq` of message `id`.
    public func chunk(message id: Int64, seq: Int) async throws -> ByteBuffer? {
        try await self.withConnection("message read") { connection in
            try await connection.rows(Statements.Chunk(message: id, seq: Int32(seq)), logger: self.logger).first
        }
    }
}

/// EXPIRE's first-retrieval times in the messages' own rows (`messages.first_retrieved_at`), shared by every node.
public struct DatabaseRetrievalTimes: RetrievalTimes {
    let database: MailDatabase

    public init(database: MailDatabase) {
        self.database = database
    }

    public func firstRetrievals(user: String) async throws -> [String: Int64] {
        guard let account = try await self.database.accountID(user, create: false) else { return [:] }
        return try await self.database.withConnection("retrieval times") { connection in
            var log: [String: Int64] = [:]
            let rows = try await connection.query(
                """
                SELECT \(unescaped: DatabaseSchema.uidlExpression), extract(epoch FROM first_retrieved_at)::bigint
                FROM messages WHERE account_id = \(account) AND first_retrieved_at IS NOT NULL
                """,
                logger: self.database.logger
            )
            for try await (uidl, seconds) in rows.decode((String, Int64).self) { log[uidl] = seconds }
            return log
        }
    }

    public func recordFirstRetrievals(_ log: [String: Int64], user: String) async throws {
        guard !log.isEmpty, let account = try await self.database.accountID(user, create: false) else { return }
        let uidls = Array(log.keys)
        let times = uidls.map { Double(log[$0]!) }
        try await self.database.withConnection("retrieval times") { connection in
            try await connection.query(
                """
                UPDATE messages m SET first_retrieved_at = to_timestamp(v.t)
                FROM unnest(\(uidls)::text[], \(times)::float8[]) AS v(u, t)
                WHERE m.account_id = \(account) AND m.first_retrieved_at IS NULL
                  AND \(unescaped: DatabaseSchema.uidlExpression) = v.u
                """,
                logger: self.database.logger
            )
        }
    }
}
