import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A failed system call on a Maildir path. Carries the path, so it belongs in logs only: what reaches a client is a
/// `MaildropError` without it.
struct FileSystemError: Error, CustomStringConvertible {
    var operation: String
    var path: String
    var errnoValue: Int32

    var description: String {
        "\(self.operation)(\(self.path)) failed: \(String(cString: strerror(self.errnoValue))) (errno \(self.errnoValue))"
    }
}

/// Thin, EINTR-safe wrappers over the POSIX calls the Maildir code needs. Everything here blocks: callers run it on
/// the `NIOThreadPool` (or in a command-line tool), never on an event loop.
enum FileSystem {
    static func fail(_ operation: String, _ path: String, _ code: Int32 = errno) -> FileSystemError {
        FileSystemError(operation: operation, path: path, errnoValue: code)
    }

    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0) throws(FileSystemError) -> Int32 {
        while true {
            let fd = systemOpen(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno != EINTR { throw Self.fail("open", path) }
        }
    }

    /// `open` that reports a missing file as `nil` instead of an error.
    static func openIfExists(_ path: String, _ flags: Int32) throws(FileSystemError) -> Int32? {
        do {
            return try Self.open(path, flags)
        } catch where error.errnoValue == ENOENT {
            return nil
        }
    }

    /// Whether `fd` is open on a regular file.
    static func isRegularFile(_ fd: Int32) -> Bool {
        var info = stat()
        return fstat(fd, &info) == 0 && info.st_mode & S_IFMT == S_IFREG
    }

    static func close(_ fd: Int32) {
        _ = systemClose(fd)
    }

    /// Reads up to `count` bytes; 0 means end of file.
    static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, path: String) throws(FileSystemError) -> Int {
        while true {
            let n = systemRead(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            if errno != EINTR { throw Self.fail("read", path) }
        }
    }

    static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws(FileSystemError) {
        var offset = 0
        while offset < bytes.count {
            let n = systemWrite(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw Self.fail("write", path)
            }
            offset += n
        }
    }

    static func write(_ fd: Int32, _ bytes: [UInt8], path: String) throws(FileSystemError) {
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(FileSystemError) in try Self.write(fd, raw, path: path) }
        }
        try result.get()
    }

    static func sync(_ fd: Int32, path: String) throws(FileSystemError) {
        try FaultInjection.shared.check("fsync", path)
        while systemFsync(fd) != 0 {
            if errno != EINTR { throw Self.fail("fsync", path) }
        }
    }

    /// fsync(2) of a directory, so that entries created, renamed or removed in it are durable.
    static func syncDirectory(_ path: String) throws(FileSystemError) {
        let fd = try Self.open(path, O_RDONLY | O_DIRECTORY)
        defer { Self.close(fd) }
        try Self.sync(fd, path: path)
    }

    /// The whole file, or `nil` when it does not exist.
    static func readFile(_ path: String) throws(FileSystemError) -> [UInt8]? {
        guard let fd = try Self.openIfExists(path, O_RDONLY) else { return nil }
        defer { Self.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Self.fail("fstat", path) }
        var bytes = [UInt8](repeating: 0, count: Int(max(st.st_size, 0)) + 4096)
        var used = 0
        while true {
            if used == bytes.count { bytes.append(contentsOf: repeatElement(0, count: max(bytes.count, 4096))) }
            let n = try bytes.withUnsafeMutableBytes { raw in
                Result { () throws(FileSystemError) in
                    try Self.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: raw[used...]), path: path)
                }
            }.get()
            if n == 0 { break }
            used += n
        }
        bytes.removeSubrange(used...)
        return bytes
    }

    /// Regular-file names in a directory (dot files and subdirectories skipped), or `nil` when it does not exist.
    /// One readdir pass, no stat per entry.
    static func listDirectory(_ path: String) throws(FileSystemError) -> [String]? {
        guard let dir = opendir(path) else {
            if errno == ENOENT { return nil }
            throw Self.fail("opendir", path)
        }
        defer { closedir(dir) }
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        var names: [String] = []
        while true {
            errno = 0
            guard let entry = readdir(dir) else {
                if errno != 0 { throw Self.fail("readdir", path) }
                break
            }
            if Int(entry.pointee.d_type) == Int(DT_DIR) { continue }
            let name = (UnsafeRawPointer(entry) + nameOffset).assumingMemoryBound(to: CChar.self)
            if name.pointee == 0x2E { continue }  // ".", "..", and hidden files
            names.append(String(cString: name))
        }
        return names
    }

    /// mkdir(2); an existing directory is fine. Returns whether it was created.
    @discardableResult
    static func makeDirectory(_ path: String, mode: mode_t = 0o700) throws(FileSystemError) -> Bool {
        if mkdir(path, mode) == 0 { return true }
        if errno == EEXIST { return false }
        throw Self.fail("mkdir", path)
    }

    /// `mkdir -p`. Returns whether the last component was created.
    @discardableResult
    static func makeDirectories(_ path: String, mode: mode_t = 0o700) throws(FileSystemError) -> Bool {
        if mkdir(path, mode) == 0 { return true }
        switch errno {
        case EEXIST:
            return false
        case ENOENT:
            let parent = Self.parent(of: path)
            guard parent != path, !parent.isEmpty else { throw Self.fail("mkdir", path, ENOENT) }
            if try Self.makeDirectories(parent, mode: mode) {
                try Self.syncDirectory(Self.parent(of: parent))
            }
            return try Self.makeDirectory(path, mode: mode)
        default:
            throw Self.fail("mkdir", path)
        }
    }

    static func parent(of path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed.removeLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        if slash == trimmed.startIndex { return "/" }
        return String(trimmed[..<slash])
    }

    /// unlink(2). Returns false when the file was already gone.
    @discardableResult
    static func unlink(_ path: String) throws(FileSystemError) -> Bool {
        try FaultInjection.shared.check("unlink", path)
        if systemUnlink(path) == 0 { return true }
        if errno == ENOENT { return false }
        throw Self.fail("unlink", path)
    }

    static func rename(_ from: String, _ to: String) throws(FileSystemError) {
        guard systemRename(from, to) == 0 else { throw Self.fail("rename", from + " -> " + to) }
    }

    static func status(_ path: String) throws(FileSystemError) -> stat? {
        var st = stat()
        if systemStat(path, &st) == 0 { return st }
        if errno == ENOENT { return nil }
        throw Self.fail("stat", path)
    }
}

/// Wall-clock time of a stat's mtime or ctime or of "now", in nanoseconds since the epoch.
struct WallClock {
    static func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Self.nanoseconds(ts)
    }

    static func changeTime(_ st: stat) -> Int64 {
        #if canImport(Darwin)
        return Self.nanoseconds(st.st_ctimespec)
        #else
        return Self.nanoseconds(st.st_ctim)
        #endif
    }

    static func modificationTime(_ st: stat) -> Int64 {
        #if canImport(Darwin)
        return Self.nanoseconds(st.st_mtimespec)
        #else
        return Self.nanoseconds(st.st_mtim)
        #endif
    }

    private static func nanoseconds(_ time: timespec) -> Int64 {
        Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }
}

/// Who this process is, for lock files and Maildir unique names.
enum ProcessIdentity {
    static let pid: pid_t = getpid()

    /// The host name, as gethostname(2) gives it.
    static let hostname: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }()

    /// When this module was first used by the process (the provider touches it at init). A lock file holding our own
    /// pid but older than this was left by an earlier process that had the same pid (pid 1 in a container, say).
    static let startTime: Int64 = WallClock.now()

    /// Whether `pid` names a live process on this host: kill(pid, 0) fails with ESRCH only for a dead one.
    static func isAlive(_ pid: pid_t) -> Bool {
        guard pid > 0 else { return false }
        if kill(pid, 0) == 0 { return true }
        return errno != ESRCH
    }
}

private func systemOpen(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { open(path, flags, mode) }
private func systemClose(_ fd: Int32) -> Int32 { close(fd) }
private func systemRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int { read(fd, buffer, count) }
private func systemWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int { write(fd, buffer, count) }
private func systemFsync(_ fd: Int32) -> Int32 { fsync(fd) }
private func systemUnlink(_ path: String) -> Int32 { unlink(path) }
private func systemRename(_ from: String, _ to: String) -> Int32 { rename(from, to) }
private func systemStat(_ path: String, _ st: inout stat) -> Int32 { stat(path, &st) }

/// A test seam (docs/security-cases.md 46, 56): makes `FileSystem` calls fail with a chosen errno for paths under a prefix, so
/// that storage errors can be injected where the real file system will not fail on demand (EIO from fsync, an
/// unlink refused). Disarmed, a call costs one atomic load.
final class FaultInjection: Sendable {
    static let shared = FaultInjection()

    struct Rule: Sendable {
        var operation: String
        var pathPrefix: String
        var errnoValue: Int32
        /// Calls that match but pass before the first failure (0: fail from the first).
        var skip: Int
    }

    private let armed = Atomic<Bool>(false)
    private let rules = Mutex<[Rule]>([])

    func arm(_ operation: String, under pathPrefix: String, errno errnoValue: Int32, after skip: Int = 0) {
        self.rules.withLock { $0.append(Rule(operation: operation, pathPrefix: pathPrefix, errnoValue: errnoValue, skip: skip)) }
        self.armed.store(true, ordering: .releasing)
    }

    func disarm(under pathPrefix: String) {
        self.rules.withLock { rules in
            rules.removeAll { $0.pathPrefix == pathPrefix }
            if rules.isEmpty { self.armed.store(false, ordering: .releasing) }
        }
    }

    func check(_ operation: String, _ path: String) throws(FileSystemError) {
        guard self.armed.load(ordering: .acquiring) else { return }
        let failure = self.rules.withLock { rules -> Int32? in
            guard let index = rules.firstIndex(where: { $0.operation == operation && path.hasPrefix($0.pathPrefix) }) else { return nil }
            if rules[index].skip > 0 {
                rules[index].skip -= 1
                return nil
            }
            return rules[index].errnoValue
        }
        if let failure { throw FileSystem.fail(operation, path, failure) }
    }
}
