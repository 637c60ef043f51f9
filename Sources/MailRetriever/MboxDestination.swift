import Crypto
import NIOCore
import SystemIO

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Delivery by appending to an mbox in mboxrd form, exactly once per account and UIDL, also across kill -9.
///
/// Each message is `From <sender> <asctime>\n` + the body with every line matching `^>*From ` given one more `>` +
/// a blank line. The sender is `envelopeSender`, else the message's `Return-Path:`, else `MAILER-DAEMON`.
///
/// Locking: an fcntl write lock on the mbox (`F_SETLKW`) and a dotlock `<path>.lock` (`O_CREAT|O_EXCL`, broken when
/// older than `staleDotlockAge`), both held during the append and during recovery. Where the mbox's directory is not
/// writable (a system mail spool without the right group) the dotlock is skipped and the fcntl lock alone holds.
///
/// Exactly-once: the sink spools the quoted body to `<state dir>/<stem>.mbox-spool` (so the record's length L and
/// SHA-256 are known), then, under the locks: `journal.setPending(uid, offset = mbox size, length = L, sha256)`
/// (fsync), append, fsync the mbox, remove the spool. The caller's `journal.markDelivered(uid)` clears the pending
/// record. `recover(journal:)` with a pending record:
/// - the bytes at `offset` have length L and the recorded digest → the append completed: marked delivered;
/// - the mbox ends at `offset` or before → nothing of ours is there: pending cleared;
/// - the mbox's tail after `offset` is exactly a prefix of our record (checked against the spool, which still
///   exists after a crash mid-append) → torn append: the mbox is truncated to `offset` (ftruncate + fsync);
/// - anything else (someone rewrote the mbox since) → the mbox is left alone, the message will be fetched again,
///   and a note is added to `recoveryWarnings`. Never truncating what we cannot prove is ours is what keeps a mail
///   reader's later changes safe.
///
/// - SeeAlso: RFC 4155 (the application/mbox type and the `From ` line).
public final class MboxDestination: MessageDestination {
    public let path: String
    public let accountKey: AccountKey
    public let envelopeSender: String?
    /// A dotlock older than this is considered left behind by a dead process and removed.
    public var staleDotlockAge: Int64 = 300
    /// How long to wait for another process's dotlock before giving up.
    public var dotlockTimeout: Int64 = 330
    /// What recovery found and could not repair (for the CLI to print as warnings).
    public private(set) var recoveryWarnings: [String] = []

    private var journal: UIDLJournal?

    public init(path: String, accountKey: AccountKey, envelopeSender: String? = nil) {
        self.path = path
        self.accountKey = accountKey
        self.envelopeSender = envelopeSender
    }

    var spoolPath: String? {
        journal.map { FileSystem.join($0.stateDirectory, accountKey.fileStem + ".mbox-spool") }
    }

    public func recover(journal: UIDLJournal) throws {
        self.journal = journal
        MboxLock.removeOrphanedDotlockFiles(mbox: path)
        guard let spoolPath else { return }
        defer { _ = unlink(spoolPath) }
        guard let pending = journal.pending else { return }
        guard try FileSystem.status(path) != nil else {
            recoveryWarnings.append("mbox \(path) is gone; message \(pending.uid) will be fetched again")
            try journal.setPending(nil)
            return
        }
        let locked = try MboxLock(path: path, staleAge: staleDotlockAge, timeout: dotlockTimeout)
        defer { locked.release() }
        let size = try FileSystem.size(locked.fd, path: path)
        if size >= pending.offset + pending.length, try appendIsComplete(pending, fd: locked.fd) {
            try journal.markDelivered(pending.uid)
            return
        }
        if size <= pending.offset {
            try journal.setPending(nil)
            return
        }
        if try tailIsPrefixOfRecord(pending, size: size, fd: locked.fd, spoolPath: spoolPath) {
            guard ftruncate(locked.fd, off_t(pending.offset)) == 0 else {
                throw FileSystemError("ftruncate", path: path, errno: errno)
            }
            try FileSystem.sync(locked.fd, path: path)
        } else {
            recoveryWarnings.append(
                "mbox \(path) changed after an interrupted append at offset \(pending.offset); left as it is, "
                    + "message \(pending.uid) will be fetched again"
            )
        }
        try journal.setPending(nil)
    }

    public func begin(uid: String) throws -> any MessageSink {
        guard let journal, let spoolPath else { throw MailRetrieverError.notRecovered }
        let fd = try FileSystem.open(spoolPath, O_RDWR | O_CREAT | O_TRUNC, mode: 0o600)
        return Sink(destination: self, journal: journal, uid: uid, spoolPath: spoolPath, fd: fd)
    }

    // MARK: - Recovery checks

    private func appendIsComplete(_ pending: PendingAppend, fd: Int32) throws -> Bool {
        guard let expected = pending.sha256 else {
            var head = [UInt8](repeating: 0, count: 5)
            let n = try head.withUnsafeMutableBytes { try FileSystem.pread(fd, into: $0, at: pending.offset, path: path) }
            return n == 5 && head == Array("From ".utf8)
        }
        var hasher = SHA256()
        var remaining = pending.length
        var offset = pending.offset
        var chunk = [UInt8](repeating: 0, count: 65536)
        while remaining > 0 {
            let want = Int(min(UInt64(chunk.count), remaining))
            let n = try chunk.withUnsafeMutableBytes {
                try FileSystem.pread(
                    fd, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<want]), at: offset, path: path)
            }
            if n == 0 { return false }
            hasher.update(data: chunk[0..<n])
            remaining -= UInt64(n)
            offset += UInt64(n)
        }
        return hexString(hasher.finalize()) == expected
    }

    /// Whether mbox[offset..<size] is a From_ line followed by a prefix of the spooled body.
    private func tailIsPrefixOfRecord(_ pending: PendingAppend, size: UInt64, fd: Int32, spoolPath: String) throws
        -> Bool
    {
        let tailLength = size - pending.offset
        guard tailLength <= pending.length else { return false }
        let spoolFD: Int32
        do {
            spoolFD = try FileSystem.open(spoolPath, O_RDONLY)
        } catch {
            return false
        }
        defer { FileSystem.close(spoolFD) }
        let spoolSize = try FileSystem.size(spoolFD, path: spoolPath)
        guard spoolSize < pending.length else { return false }
        let fromLineLength = pending.length - spoolSize

        // The From_ line: starts with "From " (as far as it got) and ends with LF.
        let headLength = Int(min(fromLineLength, tailLength))
        var head = [UInt8](repeating: 0, count: headLength)
        let n = try head.withUnsafeMutableBytes { try FileSystem.pread(fd, into: $0, at: pending.offset, path: path) }
        guard n == headLength else { return false }
        let from = Array("From ".utf8)
        guard head.starts(with: from.prefix(headLength)) else { return false }
        if UInt64(headLength) == fromLineLength && head.last != UInt8(ascii: "\n") { return false }

        // The rest: byte for byte the spool's beginning.
        var remaining = tailLength - UInt64(headLength)
        var mboxOffset = pending.offset + UInt64(headLength)
        var spoolOffset: UInt64 = 0
        var a = [UInt8](repeating: 0, count: 65536)
        var b = [UInt8](repeating: 0, count: 65536)
        while remaining > 0 {
            let want = Int(min(UInt64(a.count), remaining))
            let na = try a.withUnsafeMutableBytes {
                try FileSystem.pread(
                    fd, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<want]), at: mboxOffset, path: path)
            }
            let nb = try b.withUnsafeMutableBytes {
                try FileSystem.pread(
                    spoolFD, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<na]), at: spoolOffset, path: spoolPath
                )
            }
            guard na > 0, na == nb, a[0..<na] == b[0..<nb] else { return false }
            remaining -= UInt64(na)
            mboxOffset += UInt64(na)
            spoolOffset += UInt64(na)
        }
        return true
    }

    // MARK: - From_ line

    func fromLine(returnPath: String?, time: Int64) -> [UInt8] {
        let sender = Self.sanitizedSender(envelopeSender ?? returnPath)
        return Array("From \(sender) \(Self.asctime(time))\n".utf8)
    }

    static func sanitizedSender(_ sender: String?) -> String {
        guard var sender = sender?.trimmingSpaces else { return "MAILER-DAEMON" }
        if sender.hasPrefix("<"), let close = sender.firstIndex(of: ">") {
            sender = String(sender[sender.index(after: sender.startIndex)..<close])
        }
        let cleaned = String(sender.unicodeScalars.map { $0.value <= 0x20 || $0.value == 0x7F ? "_" : Character($0) })
        return cleaned.isEmpty ? "MAILER-DAEMON" : cleaned
    }

    /// `Wed Jun 30 21:49:08 1993`, local time, as ctime(3) without the newline.
    static func asctime(_ time: Int64) -> String {
        var seconds = time_t(time)
        var parts = tm()
        localtime_r(&seconds, &parts)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let day = parts.tm_mday < 10 ? " \(parts.tm_mday)" : "\(parts.tm_mday)"
        return "\(days[Int(parts.tm_wday)]) \(months[Int(parts.tm_mon)]) \(day) "
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) \(1900 + Int(parts.tm_year))"
    }

    /// The address in a `Return-Path:` header among the (LF) header bytes.
    static func returnPath(in header: [UInt8]) -> String? {
        for line in header.split(separator: UInt8(ascii: "\n")) {
            let text = String(decoding: line, as: UTF8.self)
            guard text.lowercased().hasPrefix("return-path:") else { continue }
            let value = text.dropFirst("return-path:".count).trimmingSpaces
            if let open = value.firstIndex(of: "<"), let close = value[open...].firstIndex(of: ">") {
                let address = String(value[value.index(after: open)..<close])
                return address.isEmpty ? nil : address
            }
            return value.isEmpty ? nil : String(value)
        }
        return nil
    }

    // MARK: - Sink

    private final class Sink: MessageSink {
        private static let headerLimit = 65536
        private let destination: MboxDestination
        private let journal: UIDLJournal
        private let uid: String
        private let spoolPath: String
        private var fd: Int32
        private let writer: BufferedFileWriter
        private var converter = CRLFToLF()
        private var quoter = MboxrdQuoter()
        private var header: [UInt8] = []
        private var headerDone = false
        private var lastWasNewline = true
        private var keepSpool = false

        init(destination: MboxDestination, journal: UIDLJournal, uid: String, spoolPath: String, fd: Int32) {
            self.destination = destination
            self.journal = journal
            self.uid = uid
            self.spoolPath = spoolPath
            self.fd = fd
            self.writer = BufferedFileWriter(fd: fd, path: spoolPath)
        }

        deinit {
            abort()
        }

        func write(_ chunk: ByteBuffer) throws {
            guard fd >= 0 else { throw MailRetrieverError.sinkClosed }
            let text = CRLFToLF.convert(chunk, with: &converter)
            collectHeader(text)
            var quoted: [UInt8] = []
            quoted.reserveCapacity(text.count + 8)
            quoter.quote(text, into: &quoted)
            try writer.append(contentsOf: quoted)
        }

        private func collectHeader(_ text: [UInt8]) {
            guard !headerDone else { return }
            for byte in text {
                if byte == UInt8(ascii: "\n") && lastWasNewline {
                    headerDone = true
                    return
                }
                header.append(byte)
                lastWasNewline = byte == UInt8(ascii: "\n")
                if header.count >= Self.headerLimit {
                    headerDone = true
                    return
                }
            }
        }

        func commit() throws {
            guard fd >= 0 else { throw MailRetrieverError.sinkClosed }
            defer { abort() }
            try finishBody()
            let fromLine = destination.fromLine(returnPath: MboxDestination.returnPath(in: header), time: currentTime())
            let bodyLength = writer.bytesWritten
            let length = UInt64(fromLine.count) + bodyLength

            // The digest of the whole record, From_ line first.
            var hasher = SHA256()
            hasher.update(data: fromLine)
            try forEachSpoolChunk { hasher.update(bufferPointer: $0) }
            let digest = hexString(hasher.finalize())

            let path = destination.path
            let mboxExisted = try FileSystem.status(path) != nil
            let lock = try MboxLock(
                path: path, staleAge: destination.staleDotlockAge, timeout: destination.dotlockTimeout)
            defer { lock.release() }
            if !mboxExisted { try FileSystem.syncDirectory(FileSystem.parent(of: path)) }
            var offset = try FileSystem.size(lock.fd, path: path)
            if offset > 0 {
                // A message must start on a line of its own.
                var last: [UInt8] = [0]
                _ = try last.withUnsafeMutableBytes { try FileSystem.pread(lock.fd, into: $0, at: offset - 1, path: path) }
                if last[0] != UInt8(ascii: "\n") {
                    try [UInt8(ascii: "\n")].withUnsafeBytes {
                        try FileSystem.pwrite(lock.fd, $0, at: offset, path: path)
                    }
                    try FileSystem.sync(lock.fd, path: path)
                    offset += 1
                }
            }
            try journal.setPending(PendingAppend(uid: uid, offset: offset, length: length, sha256: digest))
            do {
                try fromLine.withUnsafeBytes { try FileSystem.pwrite(lock.fd, $0, at: offset, path: path) }
                var position = offset + UInt64(fromLine.count)
                try forEachSpoolChunk { chunk in
                    try FileSystem.pwrite(lock.fd, chunk, at: position, path: path)
                    position += UInt64(chunk.count)
                }
                try FileSystem.sync(lock.fd, path: path)
            } catch {
                // Undo while still holding the locks; if that fails too, recovery finishes the job.
                if ftruncate(lock.fd, off_t(offset)) == 0, (try? FileSystem.sync(lock.fd, path: path)) != nil,
                    (try? journal.setPending(nil)) != nil
                {
                    throw error
                }
                keepSpool = true  // recovery compares the torn tail with it
                throw error
            }
        }

        /// Ends the body with a newline, then the blank line that separates messages.
        private func finishBody() throws {
            var tail: [UInt8] = []
            converter.finish(into: &tail)
            var quoted: [UInt8] = []
            quoter.quote(tail, into: &quoted)
            quoter.finish(into: &quoted)
            if !quoter.endsWithNewline { quoted.append(UInt8(ascii: "\n")) }
            quoted.append(UInt8(ascii: "\n"))
            try writer.append(contentsOf: quoted)
            try writer.flush()
        }

        private func forEachSpoolChunk(_ body: (UnsafeRawBufferPointer) throws -> Void) throws {
            var chunk = [UInt8](repeating: 0, count: 65536)
            var offset: UInt64 = 0
            while true {
                let n = try chunk.withUnsafeMutableBytes { try FileSystem.pread(fd, into: $0, at: offset, path: spoolPath) }
                if n == 0 { return }
                try chunk.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                offset += UInt64(n)
            }
        }

        func abort() {
            guard fd >= 0 else { return }
            FileSystem.close(fd)
            fd = -1
            if !keepSpool { _ = unlink(spoolPath) }
        }
    }
}

/// The fcntl write lock plus the dotlock on an mbox, with the mbox open read-write (created 0600 if missing).
///
/// One descriptor per lock holder: fcntl locks belong to the process and vanish when any descriptor of the file
/// is closed, so the mbox is opened exactly once while locked.
final class MboxLock {
    let fd: Int32
    private let path: String
    private var dotlockPath: String?
    private var released = false

    init(path: String, staleAge: Int64, timeout: Int64) throws {
        self.path = path
        fd = try FileSystem.open(path, O_RDWR | O_CREAT, mode: 0o600)
        var lock = flock()
        lock.l_type = Int16(F_WRLCK)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = 0
        lock.l_len = 0
        while fcntl(fd, F_SETLKW, &lock) != 0 {
            let code = errno
            if code == EINTR { continue }
            FileSystem.close(fd)
            throw FileSystemError("fcntl(F_SETLKW)", path: path, errno: code)
        }
        do {
            dotlockPath = try Self.acquireDotlock(path + ".lock", staleAge: staleAge, timeout: timeout, mbox: path)
        } catch {
            FileSystem.close(fd)
            throw error
        }
    }

    /// Returns the dotlock's path, or nil when the directory does not let us create one.
    private static func acquireDotlock(_ lockPath: String, staleAge: Int64, timeout: Int64, mbox: String) throws
        -> String?
    {
        let deadline = Int64(time(nil)) + timeout
        var delay: UInt32 = 10_000
        let content = Array("\(getpid())\n".utf8)
        while true {
            switch try createDotlock(lockPath, content: content) {
            case .acquired: return lockPath
            case .unwritable: return nil
            case .held: break
            }
            let now = Int64(time(nil))
            if let st = try FileSystem.status(lockPath), now - modificationTime(st) >= staleAge || holderIsGone(lockPath) {
                // Left by a dead process. Remove it only if it is still the same file.
                if let again = try FileSystem.status(lockPath), again.st_ino == st.st_ino,
                    modificationTime(again) == modificationTime(st)
                {
                    _ = unlink(lockPath)
                }
                continue
            }
            if now >= deadline { throw MailRetrieverError.mboxLockTimeout(path: mbox) }
            usleep(delay)
            delay = min(delay * 2, 500_000)
        }
    }

    private enum DotlockAttempt { case acquired, held, unwritable }

    /// Creates the dotlock with our PID already in it: written to a unique file beside it, then hard-linked to the
    /// lock name (as liblockfile does), so that a kill at any moment never leaves an empty lock that nobody can prove
    /// stale. Where hard links are unsupported: `O_CREAT|O_EXCL`, then the write.
    private static func createDotlock(_ lockPath: String, content: [UInt8]) throws -> DotlockAttempt {
        let tmpPath = "\(lockPath).\(getpid()).\(String(UInt64.random(in: 0...UInt64.max), radix: 16))"
        let fd: Int32
        switch Result(catching: { () throws(FileSystemError) in try FileSystem.open(tmpPath, O_WRONLY | O_CREAT | O_EXCL, mode: 0o644) }) {
        case .success(let opened): fd = opened
        case .failure(let error) where [EACCES, EPERM, EROFS].contains(error.errno): return .unwritable
        case .failure(let error): throw error
        }
        defer { _ = unlink(tmpPath) }
        do {
            try FileSystem.write(fd, content, path: tmpPath)
        } catch {
            FileSystem.close(fd)
            throw error
        }
        FileSystem.close(fd)
        if link(tmpPath, lockPath) == 0 { return .acquired }
        let code = errno
        switch code {
        case EEXIST:
            return .held
        case EPERM, ENOTSUP, EOPNOTSUPP, EMLINK, ENOSYS:
            guard let lockFD = try FileSystem.createExclusive(lockPath, O_WRONLY, mode: 0o644) else { return .held }
            try? FileSystem.write(lockFD, content, path: lockPath)
            FileSystem.close(lockFD)
            return .acquired
        default:
            // NFS may report a failed link that succeeded: the link count tells.
            if let st = try FileSystem.status(tmpPath), st.st_nlink == 2 { return .acquired }
            throw FileSystemError("link", path: lockPath, errno: code)
        }
    }

    /// Removes `<mbox>.lock.<pid>.<hex>` files of processes that are gone (killed between creating one and linking
    /// it to the dotlock). Called once per run.
    static func removeOrphanedDotlockFiles(mbox: String) {
        let directory = FileSystem.parent(of: mbox)
        let prefix = String(mbox.split(separator: "/", omittingEmptySubsequences: false).last ?? "") + ".lock."
        guard let names = try? FileSystem.entries(in: directory) else { return }
        for name in names where name.hasPrefix(prefix) {
            let parts = name.dropFirst(prefix.count).split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 2, let pid = Int32(parts[0]), pid > 0, !parts[1].isEmpty,
                parts[1].allSatisfy({ $0.isHexDigit }), kill(pid, 0) != 0, errno == ESRCH
            else { continue }
            _ = unlink(FileSystem.join(directory, name))
        }
    }

    /// Whether the dotlock names a process (its content is a PID and a newline, as written here and by liblockfile)
    /// that no longer exists. A process killed with SIGKILL leaves its dotlock behind; without this, the next run would
    /// wait `staleAge` (minutes) for it. Anything else (empty, foreign format, a live or unknown PID) is not proof.
    static func holderIsGone(_ lockPath: String) -> Bool {
        guard let bytes = try? FileSystem.readFile(lockPath, limit: 32) else { return false }
        var digits = bytes[...]
        while let last = digits.last, last == UInt8(ascii: "\n") || last == UInt8(ascii: "\r") { digits = digits.dropLast() }
        guard !digits.isEmpty, digits.count <= 10, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
            let pid = Int32(String(decoding: digits, as: UTF8.self)), pid > 0
        else { return false }
        return kill(pid, 0) != 0 && errno == ESRCH
    }

    private static func modificationTime(_ st: stat) -> Int64 {
        #if canImport(Darwin)
            Int64(st.st_mtimespec.tv_sec)
        #else
            Int64(st.st_mtim.tv_sec)
        #endif
    }

    func release() {
        guard !released else { return }
        released = true
        if let dotlockPath { _ = unlink(dotlockPath) }
        FileSystem.close(fd)  // drops the fcntl lock
    }

    deinit {
        release()
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { $0 != " " && $0 != "\t" && $0 != "\r" && $0 != "\n" }) else {
            return ""
        }
        let last = scalars.lastIndex(where: { $0 != " " && $0 != "\t" && $0 != "\r" && $0 != "\n" })!
        return String(String.UnicodeScalarView(scalars[first...last]))
    }
}
