import Logging
import MailStore
import NIOCore
import POP3Core
import PostgresNIO
import Synchronization

/// Maildrops kept in PostgreSQL (`storage.backend: postgres`): any node serves any user, and a node holds no mail
/// state of its own.
///
/// `path` and `owner` are not used: there are no mail files, so no file owner to act as; every account's mail is
/// reached through the database role pop3d connects as.
public final class PostgresMaildropProvider: MaildropProvider {
    let database: MailDatabase
    let maximumMessages: Int
    /// A passwd-file authenticates: its users get a database account on first use.
    let createsAccounts: Bool

    public init(database: MailDatabase, maximumMessages: Int, createsAccounts: Bool) {
        self.database = database
        self.maximumMessages = maximumMessages
        self.createsAccounts = createsAccounts
    }

    public func openMaildrop(user: String, path: String, owner: MailOwner?) async throws -> any Maildrop {
        // The id the login's account lookup just read, if it did (no second query); checked by the listing.
        if let known = self.database.accountIDs.take(user) {
            if let maildrop = try await self.open(account: known) { return maildrop }
            // Deleted (and perhaps made again under a new id) since the lookup: ask by name.
        }
        guard let account = try await self.database.accountID(user, create: self.createsAccounts),
            let maildrop = try await self.open(account: account)
        else {
            // Authenticated a moment ago, removed since (`pop3d user del`).
            throw MaildropError.permanent("no such account")
        }
        return maildrop
    }

    /// Locks and lists `account`; nil when no such account exists (nothing is left locked then).
    private func open(account: Int64) async throws -> PostgresMaildrop? {
        let token = try await self.database.locks.acquire(account)
        do {
            let statement = Statements.Listing(account: account, limit: Int32(clamping: self.maximumMessages))
            let database = self.database
            let rows = try await database.withConnection("listing") { connection -> [Statements.Listing.Row]? in
                do {
                    return try await connection.rows(statement, logger: database.logger)
                } catch let error as PSQLError where MailDatabase.sqlState(error) == "P0002" {
                    return nil
                }
            }
            guard let rows else {
                await self.database.locks.release(token)
                return nil
            }
            let entries = rows.map { (id, uidl, size, chunks) in (id: id, message: MaildropMessage(uniqueID: uidl, size: Int(size)), chunks: Int(chunks)) }
            return PostgresMaildrop(database: self.database, token: token, entries: entries)
        } catch {
            await self.database.locks.release(token)
            throw error
        }
    }
}

/// One open maildrop in PostgreSQL: the listing taken at open, bodies read chunk by chunk (one short query per
/// stored chunk, so a slow client holds no pooled connection), and the UPDATE commit in one transaction that first
/// checks the node still holds the lock.
final class PostgresMaildrop: Maildrop {
    let database: MailDatabase
    let token: MaildropLocks.Token
    let entries: [(id: Int64, message: MaildropMessage, chunks: Int)]
    let messages: [MaildropMessage]
    private let finished = Atomic<Bool>(false)

    init(database: MailDatabase, token: MaildropLocks.Token, entries: [(id: Int64, message: MaildropMessage, chunks: Int)]) {
        self.database = database
        self.token = token
        self.entries = entries
        self.messages = entries.map(\.message)
    }

    func content(ofMessageAt index: Int, chunkSize: Int) async throws -> MessageContent {
        guard self.entries.indices.contains(index) else { throw MaildropError.permanent("no such message") }
        let entry = self.entries[index]
        let limit = max(1, chunkSize)
        // The stored chunk being handed out, and the next one to fetch.
        let state = Mutex<(pending: ByteBuffer?, next: Int32)>((nil, 0))
        return MessageContent {
            if let piece = state.withLock({ state -> ByteBuffer? in
                guard var pending = state.pending, pending.readableBytes > 0 else { return nil }
                let piece = pending.readSlice(length: min(limit, pending.readableBytes))
                state.pending = pending
                return piece
            }) {
                return piece
            }
            let seq = state.withLock { $0.next }
            guard Int(seq) < entry.chunks else { return nil }
            guard var stored = try await self.chunk(ChunkKey(index: index, seq: seq)) else { throw MaildropError.messageGone }
            let piece = stored.readSlice(length: min(limit, stored.readableBytes)) ?? ByteBuffer()
            state.withLock { $0 = (stored, seq + 1) }
            return piece
        }
    }

    /// A stored chunk: the message's index in the listing and the chunk's number.
    struct ChunkKey: Equatable {
        let index: Int
        let seq: Int32
    }

    /// Chunks read ahead in one query, while the ones before them are sent: the chunks that follow the one last
    /// read, in order (the rest of its message, then the next messages': clients RETR in order, often pipelined),
    /// up to `readAheadOctets` or `readAheadChunks`. Small messages then cost a fraction of a query each. One batch
    /// at a time, so at most about `readAheadOctets` more are held per session; a guess not used is dropped.
    private struct Batch {
        let keys: [ChunkKey]
        let task: Task<[ByteBuffer?], any Error>
    }

    private let readAhead = Mutex<Batch?>(nil)
    static let readAheadOctets = DatabaseSchema.chunkSize
    static let readAheadChunks = 16

    /// `key`'s chunk, from the read-ahead if it guessed right. The next batch is started when `key` was not
    /// guessed, or is the last of its batch, so that its query runs while this chunk is sent.
    private func chunk(_ key: ChunkKey) async throws -> ByteBuffer? {
        let (batch, position) = self.readAhead.withLock { slot -> (Batch?, Int?) in
            guard let batch = slot, let position = batch.keys.firstIndex(of: key) else {
                slot = nil
                return (nil, nil)
            }
            return (batch, position)
        }
        if batch == nil || position == batch!.keys.count - 1 { self.startReadAhead(after: key) }
        // A batch that failed (say, no pooled connection free for it) is not the read's failure: read again.
        if let batch, let position, case .success(let chunks) = await batch.task.result { return chunks[position] }
        return try await self.database.chunk(message: self.entries[key.index].id, seq: Int(key.seq))
    }

    private func startReadAhead(after key: ChunkKey) {
        guard !self.finished.load(ordering: .acquiring) else { return }
        var keys: [ChunkKey] = []
        var octets = 0
        var last = key
        while keys.count < Self.readAheadChunks, octets < Self.readAheadOctets {
            if Int(last.seq) + 1 < self.entries[last.index].chunks {
                last = ChunkKey(index: last.index, seq: last.seq + 1)
            } else {
                guard let index = self.entries.indices[(last.index + 1)...].first(where: { self.entries[$0].chunks > 0 }) else { break }
                last = ChunkKey(index: index, seq: 0)
            }
            keys.append(last)
            octets += max(1, min(DatabaseSchema.chunkSize, self.entries[last.index].message.size - Int(last.seq) * DatabaseSchema.chunkSize))
        }
        guard !keys.isEmpty else { return }
        let (database, wanted) = (self.database, keys.map { (self.entries[$0.index].id, $0.seq) })
        let task = Task { try await database.chunks(wanted) }
        self.readAhead.withLock { $0 = Batch(keys: keys, task: task) }
    }

    func commit(deleting indices: Set<Int>) async throws {
        guard !self.finished.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let ids = indices.sorted().compactMap { self.entries.indices.contains($0) ? self.entries[$0].id : nil }
        // The lock is given back after the transaction, whatever its outcome, and before QUIT's reply.
        do {
            if !ids.isEmpty { try await self.delete(ids) }
        } catch {
            await self.database.locks.release(self.token)
            throw error
        }
        await self.database.locks.release(self.token)
    }

    /// Deletes `ids` in one transaction that first checks this node still holds the lock: all or none.
    private func delete(_ ids: [Int64]) async throws {
        let token = self.token
        let account = token.account
        let database = self.database
        try await database.withTransaction("commit") { connection in
            // The account row first: a listing on another node (FOR SHARE) waits until this commit is done, so it
            // never lists what this transaction deletes, even if the lock goes between the check and COMMIT.
            // (NO KEY UPDATE: deliveries, whose foreign key takes KEY SHARE, are not waited for.)
            try await connection.query("SELECT id FROM accounts WHERE id = \(account) FOR NO KEY UPDATE", logger: database.logger)
            var held: Int64 = 0
            for try await count in try await connection.query(MaildropLocks.stillHeld(token), logger: database.logger).decode(Int64.self) {
                held = count
            }
            guard held == 1 else {
                database.logger.error("maildrop lock lost before the commit; no message deleted", metadata: ["account": "\(account)"])
                throw MaildropError.temporary("maildrop lock lost")
            }
            try await connection.query("DELETE FROM messages WHERE account_id = \(account) AND id = ANY(\(ids))", logger: database.logger)
        }
    }

    func release() async {
        guard !self.finished.exchange(true, ordering: .acquiringAndReleasing) else { return }
        await self.database.locks.release(self.token)
    }
}
