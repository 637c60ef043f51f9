#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import POP3Core
import SystemIO

/// One message of an indexed Maildir.
struct MaildirEntry: Sendable, Equatable {
    var uid: UInt32
    var baseName: String
    /// The file name in `new/` or `cur/` as seen at open.
    var name: String
    var inCur: Bool
    var size: Int
    var uniqueID: String
    var pop3Order: UInt32?

    /// `new/<name>` or `cur/<name>`.
    var relativePath: String {
        get { (self.inCur ? "cur/" : "new/") + self.name }
        set {
            self.inCur = newValue.hasPrefix("cur/")
            self.name = String(newValue.dropFirst(4))
        }
    }
}

/// The blocking Maildir operations: indexing against `dovecot-uidlist`, the maildrop lock, deletion. Every function
/// here does file-system I/O; `MaildirProvider` runs them on its `NIOThreadPool`.
struct MaildirStore: Sendable {
    static let maildropLockName = "pop3d.lock"
    static let uidListLockName = "dovecot-uidlist.lock"
    static let uidListTempName = "dovecot-uidlist.tmp"
    /// Dovecot's MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT: a `dovecot-uidlist.lock` untouched this long is abandoned.
    static let uidListLockStaleNanoseconds: Int64 = 120 * 1_000_000_000
    /// How long we wait for another writer's `dovecot-uidlist.lock` before giving up (temporary failure).
    static let uidListLockWaitNanoseconds: Int64 = 10 * 1_000_000_000
    /// A `pop3d.lock` we cannot parse (a writer crashed between create and write) is stale after this long.
    static let unparsableMaildropLockStaleNanoseconds: Int64 = 120 * 1_000_000_000

    let path: String
    let logger: Logger
    /// Called each time a message file is read to learn its size (indexing cost; tests count it).
    let onMessageFileRead: @Sendable () -> Void

    /// The provider's cache of recent indexes; nil: always read the Maildir.
    let cache: MaildirIndexCache?

    init(
        path: String,
        logger: Logger,
        cache: MaildirIndexCache? = nil,
        onMessageFileRead: @escaping @Sendable () -> Void = {}
    ) {
        self.path = path
        self.logger = logger
        self.cache = cache
        self.onMessageFileRead = onMessageFileRead
    }

    private func file(_ name: String) -> String { self.path + "/" + name }

    // MARK: Layout

    /// Creates the Maildir (and missing parents) with `new/ cur/ tmp/`, mode 0700, durably.
    static func create(_ path: String) throws(FileSystemError) {
        let created = try FileSystem.makeDirectories(path)
        var changed = false
        for sub in ["tmp", "new", "cur"] {
            changed = try FileSystem.makeDirectory(path + "/" + sub) || changed
        }
        if changed { try FileSystem.syncDirectory(path) }
        if created { try FileSystem.syncDirectory(FileSystem.parent(of: path)) }
    }

    // MARK: Maildrop lock (pop3d.lock)

    /// Takes the cross-process maildrop lock, creating the Maildir if it is missing. A lock whose holder is a dead
    /// process on this host is removed and taken over.
    func acquireMaildropLock() throws -> LockFile {
        let lockPath = self.file(Self.maildropLockName)
        let contents = "\(ProcessIdentity.pid) \(ProcessIdentity.hostname)\n"
        for _ in 0..<4 {
            let attempt = Result { () throws(FileSystemError) in try LockFile.tryCreate(lockPath, contents: contents) }
            if case .failure(let error) = attempt, error.errno == ENOENT {
                try Self.create(self.path)
                self.logger.info("created maildir", metadata: ["path": "\(self.path)"])
                continue
            }
            switch try attempt.get() {
            case .acquired(let lock):
                return lock
            case .held(let bytes, let status):
                guard let reason = Self.staleReason(bytes, status: status) else { throw MaildropError.inUse }
                if try LockFile.breakStale(lockPath, inspected: status) {
                    self.logger.notice(
                        "removed stale maildrop lock",
                        metadata: ["path": "\(lockPath)", "reason": "\(reason)"]
                    )
                }
            }
        }
        throw MaildropError.inUse
    }

    /// Why a `pop3d.lock` ("PID HOST") or a `dovecot-uidlist.lock` ("PID:HOST") is stale, or nil when its holder
    /// may be alive: a holder on this host whose process is gone is stale at once (a kill -9 during a commit must
    /// not block the next login for minutes).
    static func staleReason(_ bytes: [UInt8], status: stat, separator: Character = " ") -> String? {
        let age = WallClock.now() - WallClock.modificationTime(status)
        let text = String(decoding: bytes, as: UTF8.self)
        guard text.hasSuffix("\n") else {
            return age > Self.unparsableMaildropLockStaleNanoseconds ? "unparsable and old" : nil
        }
        let fields = text.dropLast().split(separator: separator, maxSplits: 1)
        guard fields.count == 2, let pid = pid_t(fields[0]) else {
            return age > Self.unparsableMaildropLockStaleNanoseconds ? "unparsable and old" : nil
        }
        guard fields[1] == ProcessIdentity.hostname else { return nil }  // another host: cannot tell
        if pid == ProcessIdentity.pid {
            // Our own pid but not in our lock table: left by an earlier process with the same pid, or a second
            // provider/path spelling in this process. Only the former is stale.
            // File times come from a coarse clock: allow for its granularity.
            let margin: Int64 = 50_000_000
            return WallClock.modificationTime(status) < ProcessIdentity.startTime - margin
                ? "written before this process started" : nil
        }
        return ProcessIdentity.isAlive(pid) ? nil : "process \(pid) is gone"
    }

    // MARK: dovecot-uidlist lock

    func acquireUIDListLock() throws -> LockFile {
        let lockPath = self.file(Self.uidListLockName)
        let contents = "\(ProcessIdentity.pid):\(ProcessIdentity.hostname)\n"
        let deadline = WallClock.now() + Self.uidListLockWaitNanoseconds
        var pause: UInt32 = 1_000
        while true {
            switch try LockFile.tryCreate(lockPath, contents: contents) {
            case .acquired(let lock):
                return lock
            case .held(let bytes, let status):
                let old = WallClock.now() - WallClock.modificationTime(status) > Self.uidListLockStaleNanoseconds
                if old || Self.staleReason(bytes, status: status, separator: ":") != nil {
                    if try LockFile.breakStale(lockPath, inspected: status) {
                        self.logger.warning("removed stale dovecot-uidlist lock", metadata: ["path": "\(lockPath)"])
                    }
                    continue
                }
                guard WallClock.now() < deadline else {
                    self.logger.error("timed out waiting for dovecot-uidlist lock", metadata: ["path": "\(lockPath)"])
                    throw MaildropError.temporary("maildrop index is busy")
                }
                usleep(pause)
                pause = min(pause * 2, 50_000)
            }
        }
    }

    private func release(_ lock: LockFile) {
        let result = Result { () throws(FileSystemError) in try lock.release() }
        if case .failure(let error) = result {
            self.logger.error("cannot remove lock", metadata: ["error": "\(error)"])
        }
    }

    // MARK: Reading and writing dovecot-uidlist

    /// The uidlist, or nil when it is missing or its header is broken (it is then recreated, as Dovecot does).
    func readUIDList() throws(FileSystemError) -> DovecotUIDList? {
        let listPath = self.file(DovecotUIDList.fileName)
        guard let bytes = try FileSystem.readFile(listPath) else { return nil }
        do {
            let (list, warnings) = try DovecotUIDList.parse(bytes)
            for warning in warnings {
                self.logger.warning("dovecot-uidlist: \(warning)", metadata: ["path": "\(listPath)"])
            }
            return list
        } catch {
            self.logger.error("dovecot-uidlist unusable, recreating it", metadata: ["path": "\(listPath)", "error": "\(error)"])
            return nil
        }
    }

    /// Replaces dovecot-uidlist durably: temp file, fsync, rename, fsync of the directory. Caller holds the lock.
    func writeUIDList(_ list: DovecotUIDList) throws(FileSystemError) {
        let tempPath = self.file(Self.uidListTempName)
        let fd = try FileSystem.open(tempPath, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        do {
            try FileSystem.write(fd, list.serialized(), path: tempPath)
            try FileSystem.sync(fd, path: tempPath)
        } catch {
            FileSystem.close(fd)
            _ = try? FileSystem.unlink(tempPath)
            throw error
        }
        FileSystem.close(fd)
        try FileSystem.rename(tempPath, self.file(DovecotUIDList.fileName))
        try FileSystem.syncDirectory(self.path)
    }

    static func newUIDList() -> DovecotUIDList {
        let seconds = UInt32(truncatingIfNeeded: WallClock.now() / 1_000_000_000)
        return DovecotUIDList(uidValidity: max(seconds, 1))
    }

    // MARK: Scanning

    struct ScannedFile: Sendable {
        var baseName: String
        var name: String
        var inCur: Bool

        var relativePath: String { (self.inCur ? "cur/" : "new/") + self.name }
    }

    /// One readdir of `new/` then `cur/` (in that order, so a message moved new→cur in between is still seen), keyed
    /// by base name; `cur/` wins over `new/`.
    func scan() throws(FileSystemError) -> [String: ScannedFile] {
        var files: [String: ScannedFile] = [:]
        for sub in ["new", "cur"] {
            guard let names = try FileSystem.files(in: self.file(sub)) else {
                try FileSystem.makeDirectory(self.file(sub))
                continue
            }
            files.reserveCapacity(files.count + names.count)
            let inCur = sub == "cur"
            for name in names {
                let base = MaildirName.baseName(name)
                let key = base.endIndex == name.endIndex ? name : String(base)
                files[key] = ScannedFile(baseName: key, name: name, inCur: inCur)
            }
        }
        return files
    }

    /// The stamps of `new/`, `cur/` and `dovecot-uidlist`, taken before they are read.
    func stamps() throws(FileSystemError) -> MaildirStamps {
        MaildirStamps(
            new: try FileSystem.status(self.file("new")).map(FileStamp.init),
            cur: try FileSystem.status(self.file("cur")).map(FileStamp.init),
            uidList: try FileSystem.status(self.file(DovecotUIDList.fileName)).map(FileStamp.init)
        )
    }

    /// Finds the current name of a message whose flags changed or which moved new→cur since the snapshot.
    func locate(baseName: String) throws(FileSystemError) -> String? {
        for sub in ["cur", "new"] {
            for name in try FileSystem.files(in: self.file(sub)) ?? [] where MaildirName.baseName(name) == baseName {
                return sub + "/" + name
            }
        }
        return nil
    }

    /// Reads a message file once to learn its POP3 size; nil when it vanished.
    func measure(_ relativePath: String) throws(FileSystemError) -> Int? {
        let filePath = self.file(relativePath)
        guard let fd = try FileSystem.openIfExists(filePath, O_RDONLY) else { return nil }
        defer { FileSystem.close(fd) }
        self.onMessageFileRead()
        var counter = MessageSize.Counter()
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        defer { chunk.deallocate() }
        while true {
            let n = try FileSystem.read(fd, into: chunk, path: filePath)
            if n == 0 { break }
            counter.update(UnsafeRawBufferPointer(rebasing: chunk[..<n]))
        }
        return counter.pop3Size
    }

    // MARK: Indexing

    /// Lists the maildrop: from the cache when `new/`, `cur/` and the uidlist are unchanged since it was last indexed;
    /// else one scan, one uidlist read, a dictionary lookup per file. Only when files are new to the uidlist or have
    /// no known size does it take the uidlist lock, measure those files and rewrite the uidlist.
    func index() throws -> [MaildirEntry] {
        let observedAt = self.cache?.now() ?? 0
        var stamps = MaildirStamps()
        if let cache = self.cache {
            stamps = try self.stamps()
            if let entries = cache.lookup(self.path, stamps: stamps) { return entries }
        }
        let files = try self.scan()
        if let list = try self.readUIDList(), let entries = try self.resolve(files, in: list) {
            self.cache?.store(self.path, stamps: stamps, entries: entries, observedAt: observedAt)
            return entries
        }
        let lock = try self.acquireUIDListLock()
        defer { self.release(lock) }
        var list = try self.readUIDList() ?? Self.newUIDList()
        if list.mailboxGUID.isEmpty { list.mailboxGUID = DovecotUIDList.generateGUID() }
        let (entries, added) = try self.update(files, in: &list)
        try self.writeUIDList(list)
        if let cache = self.cache {
            // Taken under the uidlist lock after our own write: no other writer can have touched it since.
            stamps.uidList = try FileSystem.status(self.file(DovecotUIDList.fileName)).map(FileStamp.init)
            cache.store(self.path, stamps: stamps, entries: entries, observedAt: observedAt, trustedUIDList: true)
        }
        self.sweepTemporaryFiles()
        if added > 0 {
            self.logger.debug("indexed new messages", metadata: ["count": "\(added)", "path": "\(self.path)"])
        }
        return entries
    }

    /// Imported messages keep their old server's UIDL: sets the `P` extension (Dovecot's POP3 UIDL field) of each
    /// named file's record in dovecot-uidlist, indexing new files first, under the uidlist lock.
    func setUniqueIDs(_ byBaseName: [String: String]) throws {
        let lock = try self.acquireUIDListLock()
        defer { self.release(lock) }
        var list = try self.readUIDList() ?? Self.newUIDList()
        if list.mailboxGUID.isEmpty { list.mailboxGUID = DovecotUIDList.generateGUID() }
        _ = try self.update(try self.scan(), in: &list)
        for index in list.records.indices {
            if let uniqueID = byBaseName[list.records[index].baseName] { list.records[index].setExtension("P", uniqueID) }
        }
        try self.writeUIDList(list)
    }

    /// Files left in tmp/ by deliveries that died are removed after 36 hours, as maildir(5) and Dovecot do. Runs when
    /// the index is rewritten (new mail arrived), so a quiet maildrop costs nothing.
    static let temporaryFileLifetimeNanoseconds: Int64 = 36 * 3600 * 1_000_000_000

    func sweepTemporaryFiles(now: Int64 = WallClock.now()) {
        guard let names = try? FileSystem.files(in: self.file("tmp")) else { return }
        for name in names {
            let path = self.file("tmp/" + name)
            guard let st = (try? FileSystem.status(path)) ?? nil,
                now - WallClock.modificationTime(st) > Self.temporaryFileLifetimeNanoseconds
            else { continue }
            if (try? FileSystem.unlink(path)) == true {
                self.logger.notice("removed an abandoned file from tmp/", metadata: ["path": "\(path)"])
            }
        }
    }

    /// Read-only resolution: nil when the uidlist needs an update (a file without record or size, or an old format).
    /// Walks the records in UID order and looks each up among the files: no sort unless `O` extensions are present.
    private func resolve(_ files: [String: ScannedFile], in list: DovecotUIDList) throws -> [MaildirEntry]? {
        guard list.version == 3, !list.mailboxGUID.isEmpty else { return nil }
        var entries: [MaildirEntry] = []
        entries.reserveCapacity(files.count)
        var ordered = false
        for record in list.records {
            guard let file = files[record.baseName] else { continue }
            guard let size = Self.knownSize(file.baseName, record) else { return nil }
            let entry = self.entry(file, record, size: size, uidValidity: list.uidValidity)
            ordered = ordered || entry.pop3Order != nil
            entries.append(entry)
        }
        guard entries.count == files.count else { return nil }
        return ordered ? Self.sorted(entries) : entries
    }

    /// Adds records for new files (next UIDs, in delivery-time order) and sizes for records without one.
    private func update(_ files: [String: ScannedFile], in list: inout DovecotUIDList) throws -> ([MaildirEntry], Int) {
        var byBaseName: [String: Int] = [:]
        byBaseName.reserveCapacity(list.records.count)
        for (index, record) in list.records.enumerated() { byBaseName[record.baseName] = index }
        var entries: [MaildirEntry] = []
        entries.reserveCapacity(files.count)
        var newFiles: [ScannedFile] = []
        for file in files.values {
            guard let index = byBaseName[file.baseName] else {
                newFiles.append(file)
                continue
            }
            var size = Self.knownSize(file.baseName, list.records[index])
            if size == nil {
                guard let measured = try self.measure(file.relativePath) else { continue }
                list.records[index].setExtension("W", String(measured))
                size = measured
            }
            entries.append(self.entry(file, list.records[index], size: size!, uidValidity: list.uidValidity))
        }
        let ordered = newFiles.map { (key: MaildirName.DeliveryKey($0.baseName), file: $0) }.sorted { $0.key < $1.key }
        var added = 0
        for (_, file) in ordered {
            var record = DovecotUIDList.Record(uid: list.nextUID, extensions: [], baseName: file.baseName)
            let size: Int
            if let fromName = MaildirName.sizeField(0x57, in: file.baseName[...]) {
                size = fromName
            } else {
                guard let measured = try self.measure(file.relativePath) else { continue }
                record.extensions.append("W\(measured)")
                size = measured
            }
            guard list.nextUID < UInt32.max - 1 else {
                self.logger.critical("UID space exhausted", metadata: ["path": "\(self.path)"])
                throw MaildropError.permanent("maildrop index is full")
            }
            list.nextUID += 1
            list.records.append(record)
            entries.append(self.entry(file, record, size: size, uidValidity: list.uidValidity))
            added += 1
        }
        return (Self.sorted(entries), added)
    }

    private static func knownSize(_ baseName: String, _ record: DovecotUIDList.Record) -> Int? {
        if let size = MaildirName.sizeField(0x57, in: baseName[...]) { return size }
        if let value = record.extensionValue("W"), let size = Int(value), size >= 0 { return size }
        return nil
    }

    private func entry(_ file: ScannedFile, _ record: DovecotUIDList.Record, size: Int, uidValidity: UInt32) -> MaildirEntry {
        MaildirEntry(
            uid: record.uid,
            baseName: file.baseName,
            name: file.name,
            inCur: file.inCur,
            size: size,
            uniqueID: self.uniqueID(record, uidValidity: uidValidity),
            pop3Order: record.extensions.isEmpty ? nil : record.extensionValue("O").flatMap { UInt32($0) }
        )
    }

    /// Dovecot's POP3 UIDL: the record's `P` extension (empty means the base file name), else the default
    /// `pop3_uidl_format = %08Xu%08Xv`.
    func uniqueID(_ record: DovecotUIDList.Record, uidValidity: UInt32) -> String {
        if !record.extensions.isEmpty, let override = record.extensionValue("P") {
            let candidate = override.isEmpty ? record.baseName : String(override)
            if UniqueID(candidate) != nil { return candidate }
            self.logger.warning(
                "dovecot-uidlist POP3 UIDL unusable, using the default format",
                metadata: ["uid": "\(record.uid)", "path": "\(self.path)"]
            )
        }
        return Self.defaultUniqueID(uid: record.uid, uidValidity: uidValidity)
    }

    static func defaultUniqueID(uid: UInt32, uidValidity: UInt32) -> String {
        let digits: StaticString = "0123456789ABCDEF"
        return String(unsafeUninitializedCapacity: 16) { buffer in
            digits.withUTF8Buffer { hex in
                for (offset, value) in [uid, uidValidity].enumerated() {
                    for nibble in 0..<8 {
                        buffer[offset * 8 + nibble] = hex[Int((value >> UInt32(28 - nibble * 4)) & 0xF)]
                    }
                }
            }
            return 16
        }
    }

    /// Dovecot's POP3 order: messages with an `O` extension first (by it), then the rest by UID.
    private static func sorted(_ entries: [MaildirEntry]) -> [MaildirEntry] {
        entries.sorted { a, b in
            switch (a.pop3Order, b.pop3Order) {
            case (let x?, let y?) where x != y: return x < y
            case (.some, .none): return true
            case (.none, .some): return false
            default: return a.uid < b.uid
            }
        }
    }

    // MARK: Deleting

    /// Unlinks the messages (re-locating any whose name changed), makes that durable, then removes their records
    /// from dovecot-uidlist, keeping its next UID.
    func delete(_ entries: [MaildirEntry]) throws {
        guard !entries.isEmpty else { return }
        self.cache?.invalidate(self.path)
        var listing: [String: String]?
        for entry in entries {
            if try FileSystem.unlink(self.file(entry.relativePath)) { continue }
            if listing == nil {
                listing = try self.scan().mapValues(\.relativePath)
            }
            if let current = listing?[entry.baseName] {
                try FileSystem.unlink(self.file(current))
            }
        }
        try FileSystem.syncDirectory(self.file("cur"))
        try FileSystem.syncDirectory(self.file("new"))

        let lock = try self.acquireUIDListLock()
        defer { self.release(lock) }
        guard var list = try self.readUIDList() else { return }
        let deleted = Set(entries.map(\.uid))
        list.records.removeAll { deleted.contains($0.uid) }
        if list.mailboxGUID.isEmpty { list.mailboxGUID = DovecotUIDList.generateGUID() }
        try self.writeUIDList(list)
    }
}
