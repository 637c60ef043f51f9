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

/// Delivery into a Maildir, exactly once per account and UIDL, also across kill -9.
///
/// Each message is written to an unnamed file in `new/` (O_TMPFILE, where the file system has it) or else to `tmp/`;
/// `commit()` hands the file to a ``DurabilityPool``, whose threads fsync it and then name it in `new/` (linkat, or
/// link, or where links are unsupported a rename that does not clobber), several messages at once so that their
/// fsyncs share journal commits. `flush()` waits for those, throws if any failed, and fsyncs `new/` once for all
/// messages committed since the last flush (so a batch costs one directory fsync); the caller journals them only
/// after that. The file name carries a digest of (account, UID):
/// `<unixtime>.P<hex16>.<hostname>,S=<size>`, hex16 being the first 8 bytes of SHA-256(stem + "\0" + uid).
/// `recover(journal:)` scans `new/` and `cur/` once for such names, so a message stored just before a crash (before
/// the journal recorded it) is recognised rather than stored twice — also after the user's reader moved it to `cur/`.
///
/// - SeeAlso: [Maildir](https://cr.yp.to/proto/maildir.html)
public final class MaildirDestination: MessageDestination {
    public let path: String
    public let accountKey: AccountKey
    public let hostname: String
    private var storedDigests: Set<String> = []
    private var recovered = false
    /// Messages linked into `new/` since its last fsync.
    private var unsyncedPublications = 0
    /// Whether messages are written as unnamed files (O_TMPFILE) in `new/` and named there with linkat(2) once
    /// complete and fsync'ed: one directory change per message instead of three (create and unlink in `tmp/`, link
    /// in `new/`), and a crash leaves nothing behind. Probed by `recover(journal:)`; else `tmp/` as maildir(5) says.
    private var anonymousFiles = false
    /// Tests turn unnamed files off to exercise the `tmp/` path.
    var allowsAnonymousFiles = true
    /// Marks this account's files in `tmp/` so that recovery removes only ours.
    private let accountTag: String
    /// fsyncs and names committed messages; `flush()` drains it.
    private let durability = DurabilityPool()

    public init(path: String, accountKey: AccountKey, hostname: String = MaildirDestination.localHostName()) {
        self.path = path
        self.accountKey = accountKey
        // Maildir convention: "/" and ":" in the host part are written as octal escapes.
        var safe = ""
        for character in hostname {
            switch character {
            case "/": safe += "\\057"
            case ":": safe += "\\072"
            case ",": safe += "\\054"
            default: safe.append(character)
            }
        }
        self.hostname = safe
        self.accountTag = hexString(SHA256.hash(data: Array("account\0\(accountKey.fileStem)".utf8)).prefix(8))
    }

    /// gethostname(3), used in file names.
    public static func localHostName() -> String { ProcessIdentity.hostname }

    /// The 16 hex digits that identify (account, UID) in a file name.
    public func digest(of uid: String) -> String {
        hexString(SHA256.hash(data: Array((accountKey.fileStem + "\0" + uid).utf8)).prefix(8))
    }

    public func isStored(uid: String) -> Bool {
        storedDigests.contains(digest(of: uid))
    }

    /// Creates the Maildir if missing, removes our stale `tmp/` files, learns which messages are stored, and marks
    /// those the journal knows but had not recorded as delivered.
    public func recover(journal: UIDLJournal) throws {
        for sub in ["", "/new", "/cur", "/tmp"] {
            try FileSystem.makeDirectories(path + sub, mode: 0o700)
        }
        let tmp = FileSystem.join(path, "tmp")
        for name in try (FileSystem.entries(in: tmp) ?? []) where name.contains("A\(accountTag).") {
            _ = unlink(FileSystem.join(tmp, name))
        }
        anonymousFiles = allowsAnonymousFiles
            && Self.canNameAnonymousFiles(in: tmp, probeName: "probe.R\(getpid())A\(accountTag).\(hostname)")
        storedDigests = []
        for sub in ["new", "cur"] {
            for name in try (FileSystem.entries(in: FileSystem.join(path, sub)) ?? []) {
                if let digest = Self.embeddedDigest(in: name) { storedDigests.insert(digest) }
            }
        }
        // A run that was killed may have linked messages whose directory entries were not fsync'ed yet: make them
        // durable before the journal may call them delivered.
        try FileSystem.syncDirectory(FileSystem.join(path, "new"))
        try journal.markDelivered(
            journal.allEntries.filter { !$0.delivered && storedDigests.contains(digest(of: $0.uid)) }.map(\.uid)
        )
        recovered = true
    }

    /// Messages are found by name after a crash (`recover(journal:)`), so they can be journaled in batches.
    public var commitBatchLimit: Int { 32 }

    public func flush() throws {
        try durability.drain()
        guard unsyncedPublications > 0 else { return }
        try FileSystem.syncDirectory(FileSystem.join(path, "new"))
        unsyncedPublications = 0
    }

    public func begin(uid: String) throws -> any MessageSink {
        guard recovered else { throw MailRetrieverError.notRecovered }
        guard !isStored(uid: uid) else { throw MailRetrieverError.alreadyStored(uid: uid) }
        let digest = digest(of: uid)
        let timestamp = Int64(time(nil))
        if anonymousFiles, let flags = Self.openAnonymous {
            let fd = try FileSystem.open(FileSystem.join(path, "new"), flags, mode: 0o600)
            return Sink(destination: self, digest: digest, time: timestamp, tmpPath: nil, fd: fd)
        }
        let tmpPath = FileSystem.join(path, "tmp/\(timestamp).P\(digest)A\(accountTag).\(hostname)")
        let fd = try FileSystem.open(tmpPath, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        return Sink(destination: self, digest: digest, time: timestamp, tmpPath: tmpPath, fd: fd)
    }

    /// open(2) flags for an unnamed file in a directory (O_TMPFILE = __O_TMPFILE | O_DIRECTORY, which Swift does not
    /// import), where known.
    #if os(Linux) && (arch(x86_64) || arch(arm64))
        static let openAnonymous: Int32? = O_WRONLY | 0o20000000 | O_DIRECTORY
    #else
        static let openAnonymous: Int32? = nil
    #endif

    /// Gives an unnamed file a name: through /proc, as linkat(AT_EMPTY_PATH) needs a privilege.
    static func nameAnonymousFile(_ fd: Int32, at path: String) -> Int32 {
        linkat(AT_FDCWD, "/proc/self/fd/\(fd)", AT_FDCWD, path, AT_SYMLINK_FOLLOW)
    }

    /// Whether this file system and /proc let an unnamed file be created in `directory` and named there.
    static func canNameAnonymousFiles(in directory: String, probeName: String) -> Bool {
        guard let flags = openAnonymous, let fd = try? FileSystem.open(directory, flags, mode: 0o600) else { return false }
        defer { FileSystem.close(fd) }
        let probe = FileSystem.join(directory, probeName)
        guard nameAnonymousFile(fd, at: probe) == 0 else { return false }
        _ = unlink(probe)
        return true
    }

    /// `.P<16 lowercase hex>.` in a name, as written by this type.
    static func embeddedDigest(in name: String) -> String? {
        let bytes = Array(name.utf8)
        var index = 0
        while index + 19 <= bytes.count {
            if bytes[index] == UInt8(ascii: "."), bytes[index + 1] == UInt8(ascii: "P"),
                bytes[index + 18] == UInt8(ascii: "."),
                bytes[(index + 2)..<(index + 18)].allSatisfy({
                    ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66)
                })
            {
                return String(decoding: bytes[(index + 2)..<(index + 18)], as: UTF8.self)
            }
            index += 1
        }
        return nil
    }

    fileprivate func didStore(digest: String) {
        storedDigests.insert(digest)
        unsyncedPublications += 1
    }

    private final class Sink: MessageSink {
        private let destination: MaildirDestination
        private let digest: String
        private let time: Int64
        /// The file in `tmp/`; nil for an unnamed file in `new/`.
        private let tmpPath: String?
        private var fd: Int32
        private let writer: BufferedFileWriter
        private var converter = CRLFToLF()
        private var closed = false

        init(destination: MaildirDestination, digest: String, time: Int64, tmpPath: String?, fd: Int32) {
            self.destination = destination
            self.digest = digest
            self.time = time
            self.tmpPath = tmpPath
            self.fd = fd
            self.writer = BufferedFileWriter(fd: fd, path: tmpPath ?? FileSystem.join(destination.path, "new/(unnamed)"))
        }

        deinit {
            abort()
        }

        func write(_ chunk: ByteBuffer) throws {
            guard !closed else { throw MailRetrieverError.sinkClosed }
            try writer.append(contentsOf: CRLFToLF.convert(chunk, with: &converter))
        }

        func commit() throws {
            guard !closed else { throw MailRetrieverError.sinkClosed }
            do {
                var tail: [UInt8] = []
                converter.finish(into: &tail)
                try writer.append(contentsOf: tail)
                try writer.flush()
            } catch {
                abort()
                throw error
            }
            let publication = Publication(
                fd: fd, tmpPath: tmpPath, newDirectory: FileSystem.join(destination.path, "new"),
                name: "\(time).P\(digest).\(destination.hostname),S=\(writer.bytesWritten)")
            fd = -1  // the pool's job closes it
            closed = true
            destination.didStore(digest: digest)
            destination.durability.submit { () throws(FileSystemError) in try publication.run() }
        }

        func abort() {
            guard !closed else { return }
            closed = true
            if fd >= 0 {
                FileSystem.close(fd)  // an unnamed file goes with its last descriptor
                fd = -1
            }
            if let tmpPath { _ = unlink(tmpPath) }
        }
    }

    /// A written message on its way to `new/`, on a ``DurabilityPool`` thread: fsync, then a name in `new/` that
    /// never replaces an existing file (`flush()` makes `new/` durable). Owns the descriptor.
    private struct Publication: Sendable {
        let fd: Int32
        /// The file in `tmp/`; nil for an unnamed file in `new/`.
        let tmpPath: String?
        let newDirectory: String
        let name: String

        func run() throws(FileSystemError) {
            defer {
                FileSystem.close(fd)  // an unnamed file that got no name goes with its last descriptor
                if let tmpPath { _ = unlink(tmpPath) }  // a leftover is removed by the next recover()
            }
            try FileSystem.sync(fd, path: tmpPath ?? newDirectory)
            let newPath = FileSystem.join(newDirectory, name)
            guard let tmpPath else {
                guard MaildirDestination.nameAnonymousFile(fd, at: newPath) == 0 || errno == EEXIST else {
                    throw FileSystemError("linkat", path: newPath, errno: errno)
                }
                return  // EEXIST: same account, UID and second: this very message is already there
            }
            if link(tmpPath, newPath) != 0 {
                let code = errno
                switch code {
                case EEXIST:
                    // Same account, UID and second: this very message is already there.
                    break
                case EPERM, ENOTSUP, EOPNOTSUPP, EXDEV, EMLINK, ENOSYS:
                    // File systems without hard links: rename, which must not clobber.
                    guard try FileSystem.status(newPath) == nil else { break }
                    guard rename(tmpPath, newPath) == 0 else {
                        throw FileSystemError("rename", path: newPath, errno: errno)
                    }
                default:
                    throw FileSystemError("link", path: newPath, errno: code)
                }
            }
        }
    }
}
