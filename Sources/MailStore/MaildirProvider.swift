import Logging
import NIOCore
import NIOPosix
import POP3Core
import Synchronization
import SystemIO

/// Maildrops stored as Maildirs, compatible with Dovecot: its `dovecot-uidlist` is the index (UIDs, sizes, POP3
/// UIDLs), so a Maildir Dovecot served keeps its UIDLs here and the other way round.
///
/// Opening a maildrop takes the in-process lock table entry and the `pop3d.lock` dotlock, lists `new/` and `cur/`
/// once, reads `dovecot-uidlist` once, and looks each file up by base name; message files are opened only to measure
/// ones never indexed before. All file-system work runs on `threadPool`.
public final class MaildirProvider: MaildropProvider {
    package let threadPool: NIOThreadPool
    let logger: Logger
    private let messageFileReads = Atomic<Int>(0)

    /// Recent indexes, so that an unchanged maildrop is opened without listing it (see `MaildirIndexCache`).
    let indexCache: MaildirIndexCache?

    /// - Parameter indexCacheCapacity: messages (plus one per Maildir) whose index is kept in memory between
    ///   sessions; 0 turns the cache off.
    public convenience init(
        threadPool: NIOThreadPool,
        logger: Logger,
        indexCacheCapacity: Int = MaildirProvider.defaultIndexCacheCapacity
    ) {
        let cache = indexCacheCapacity > 0 ? MaildirIndexCache(capacity: indexCacheCapacity) : nil
        self.init(threadPool: threadPool, logger: logger, indexCache: cache)
    }

    init(threadPool: NIOThreadPool, logger: Logger, indexCache: MaildirIndexCache?) {
        self.threadPool = threadPool
        self.logger = logger
        self.indexCache = indexCache
        _ = ProcessIdentity.startTime
    }

    public static let defaultIndexCacheCapacity = MaildirIndexCache.defaultCapacity

    /// How many message files this provider has read to learn their size (indexing work). Once a maildrop is
    /// indexed, opening and listing it again leaves this unchanged.
    public var messageFilesReadForIndexing: Int {
        self.messageFileReads.load(ordering: .relaxed)
    }

    /// Accesses the files as this process, whatever `owner` says: pop3d uses this provider directly only when it
    /// runs as the accounts' owner or was not started as root (it says so at start; see `POP3Daemon`), and
    /// `SeparatedMaildropProvider` hands it only the accounts that share pop3d's own identity.
    public func openMaildrop(user: String, path: String, owner: MailOwner?) async throws -> any Maildrop {
        try await self.openMaildirMaildrop(user: user, path: path)
    }

    package func openMaildirMaildrop(user: String, path: String) async throws -> MaildirMaildrop {
        let key = MaildropLockTable.key(for: path)
        guard MaildropLockTable.shared.tryAcquire(key) else { throw MaildropError.inUse }
        var logger = self.logger
        logger[metadataKey: "user"] = "\(user)"
        let store = MaildirStore(path: key, logger: logger, cache: self.indexCache) {
            self.messageFileReads.add(1, ordering: .relaxed)
        }
        do {
            let (lock, entries) = try await self.threadPool.runIfActive {
                let lock = try store.acquireMaildropLock()
                do {
                    return (lock, try store.index())
                } catch {
                    try? lock.release()
                    throw error
                }
            }
            return MaildirMaildrop(store: store, lock: lock, lockKey: key, entries: entries, threadPool: self.threadPool)
        } catch {
            MaildropLockTable.shared.release(key)
            throw Self.clientError(error, logger: logger, operation: "open maildrop")
        }
    }

    /// Maps any failure to a `MaildropError` a client may see, logging the details (paths) once.
    package static func clientError(_ error: any Error, logger: Logger, operation: String) -> MaildropError {
        if let error = error as? MaildropError {
            if error != .inUse { logger.warning("\(operation) failed", metadata: ["error": "\(error.logDescription)"]) }
            return error
        }
        logger.error("\(operation) failed", metadata: ["error": "\(error)"])
        return .temporary("maildrop temporarily unavailable")
    }
}

/// An open, locked Maildir maildrop.
package final class MaildirMaildrop: Maildrop {
    package let messages: [MaildropMessage]
    private let entries: [MaildirEntry]
    private let store: MaildirStore
    private let lockKey: String
    private let threadPool: NIOThreadPool
    private let state: Mutex<State>

    private struct State {
        /// nil once released.
        var lock: LockFile?
        /// Current names of messages found renamed since the snapshot.
        var relocated: [Int: String] = [:]
    }

    init(store: MaildirStore, lock: LockFile, lockKey: String, entries: [MaildirEntry], threadPool: NIOThreadPool) {
        self.store = store
        self.lockKey = lockKey
        self.entries = entries
        self.messages = entries.map { MaildropMessage(uniqueID: $0.uniqueID, size: $0.size) }
        self.threadPool = threadPool
        self.state = Mutex(State(lock: lock))
    }

    package func content(ofMessageAt index: Int, chunkSize: Int) async throws -> MessageContent {
        let store = self.store
        let opened: (reader: FileChunkReader, first: ByteBuffer?)
        do {
            // Open and read the first chunk in one trip to the pool.
            opened = try await self.threadPool.runIfActive { () throws -> (reader: FileChunkReader, first: ByteBuffer?) in
                let (fd, relativePath) = try self.openMessageFile(at: index)
                let reader = FileChunkReader(
                    fd: fd,
                    path: store.path + "/" + relativePath,
                    chunkSize: max(chunkSize, 1),
                    logger: store.logger
                )
                return (reader, try reader.readChunk())
            }
        } catch {
            throw MaildirProvider.clientError(error, logger: store.logger, operation: "open message")
        }
        return MessageContent(reader: opened.reader, first: opened.first, threadPool: self.threadPool)
    }

    /// Opens message `index` read-only (blocking: call on the pool), following a rename since the snapshot (flags
    /// changed, or moved from new/ to cur/), and returns the descriptor with the file's current relative path.
    package func openMessageFile(at index: Int) throws -> (fd: Int32, relativePath: String) {
        guard self.entries.indices.contains(index) else { throw MaildropError.permanent("no such message") }
        let entry = self.entries[index]
        let known = self.state.withLock { $0.relocated[index] } ?? entry.relativePath
        var relativePath = known
        // O_NONBLOCK: a FIFO put in the Maildir by its owner must not block the open; then only a regular file is
        // served (not a FIFO, a device or a symbolic link to one).
        let flags = O_RDONLY | O_NONBLOCK | O_NOCTTY
        var descriptor = try FileSystem.openIfExists(self.store.path + "/" + known, flags)
        if descriptor == nil {
            guard let current = try self.store.locate(baseName: entry.baseName) else { throw MaildropError.messageGone }
            relativePath = current
            descriptor = try FileSystem.openIfExists(self.store.path + "/" + current, flags)
        }
        guard let fd = descriptor else { throw MaildropError.messageGone }
        guard FileSystem.isRegularFile(fd) else {
            FileSystem.close(fd)
            self.store.logger.error("message is not a regular file", metadata: ["file": "\(relativePath)"])
            throw MaildropError.permanent("message could not be read")
        }
        if relativePath != known {
            self.state.withLock { $0.relocated[index] = relativePath }
        }
        return (fd, relativePath)
    }

    package func commit(deleting indices: Set<Int>) async throws {
        let (held, relocated) = self.state.withLock { ($0.lock != nil, $0.relocated) }
        guard held else { return }
        let doomed = indices.sorted().filter { self.entries.indices.contains($0) }.map { index in
            var entry = self.entries[index]
            if let current = relocated[index] { entry.relativePath = current }
            return entry
        }
        let store = self.store
        do {
            try await self.threadPool.runIfActive { try store.delete(doomed) }
        } catch {
            await self.release()
            throw MaildirProvider.clientError(error, logger: store.logger, operation: "commit")
        }
        store.logger.debug("committed deletions", metadata: ["count": "\(doomed.count)"])
        await self.release()
    }

    package func release() async {
        guard let lock = self.state.withLock({ state -> LockFile? in
            defer { state.lock = nil }
            return state.lock
        }) else { return }
        let logger = self.store.logger
        do {
            try await self.threadPool.runIfActive { try lock.release() }
        } catch {
            // Pool gone (shutdown): do it here rather than leave the lock behind.
            do { try lock.release() } catch {
                logger.error("cannot remove maildrop lock", metadata: ["error": "\(error)"])
            }
        }
        MaildropLockTable.shared.release(self.lockKey)
    }

    deinit {
        // A session that never released (a bug): do not leave the maildrop locked until restart.
        if let lock = self.state.withLock({ $0.lock }) {
            self.store.logger.warning("maildrop dropped without release; releasing")
            try? lock.release()
            MaildropLockTable.shared.release(self.lockKey)
        }
    }
}
