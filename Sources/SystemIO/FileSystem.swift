#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Thin, EINTR-safe wrappers over the POSIX calls the server, the retriever and the passwd-file code need, with one
/// error type and the fault-injection seam (`FaultInjection`) on fsync and unlink. Everything here blocks: callers
/// run it on a thread pool or in a command-line tool, never on an event loop. Every durable step goes through here.
public enum FileSystem {
    /// The error for a failed `operation` on `path`, with `errno` as it is now unless given.
    public static func fail(_ operation: String, _ path: String, _ code: Int32 = errno) -> FileSystemError {
        FileSystemError(operation, path: path, errno: code)
    }

    /// open(2) with O_CLOEXEC. `mode` applies only with O_CREAT (owner-only by default).
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o600) throws(FileSystemError) -> Int32 {
        while true {
            let fd = systemOpen(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno != EINTR { throw Self.fail("open", path) }
        }
    }

    /// `open` that reports a missing file as `nil` instead of an error.
    public static func openIfExists(_ path: String, _ flags: Int32) throws(FileSystemError) -> Int32? {
        do {
            return try Self.open(path, flags)
        } catch where error.errno == ENOENT {
            return nil
        }
    }

    /// A new file (O_CREAT | O_EXCL with `flags`), or nil when the name exists already.
    public static func createExclusive(_ path: String, _ flags: Int32, mode: mode_t = 0o600) throws(FileSystemError) -> Int32? {
        do {
            return try Self.open(path, flags | O_CREAT | O_EXCL, mode: mode)
        } catch where error.errno == EEXIST {
            return nil
        }
    }

    /// Whether `fd` is open on a regular file.
    public static func isRegularFile(_ fd: Int32) -> Bool {
        var info = stat()
        return fstat(fd, &info) == 0 && info.st_mode & S_IFMT == S_IFREG
    }

    public static func close(_ fd: Int32) {
        _ = systemClose(fd)
    }

    /// Reads up to `buffer.count` bytes; 0 means end of file.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, path: String) throws(FileSystemError) -> Int {
        while true {
            let n = systemRead(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            if errno != EINTR { throw Self.fail("read", path) }
        }
    }

    /// Reads up to `buffer.count` bytes at `offset`; 0 means end of file.
    public static func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, path: String) throws(FileSystemError) -> Int {
        while true {
            let n = systemPread(fd, buffer.baseAddress, buffer.count, off_t(offset))
            if n >= 0 { return n }
            if errno != EINTR { throw Self.fail("read", path) }
        }
    }

    /// Writes all of `bytes`.
    public static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws(FileSystemError) {
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

    public static func write(_ fd: Int32, _ bytes: [UInt8], path: String) throws(FileSystemError) {
        // withUnsafeBytes rethrows untyped errors: carry the typed one out in a Result.
        try bytes.withUnsafeBytes { raw in
            Result { () throws(FileSystemError) in try Self.write(fd, raw, path: path) }
        }.get()
    }

    /// Writes all of `bytes` at `offset` (pwrite(2); the file offset does not move).
    public static func pwrite(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64, path: String) throws(FileSystemError) {
        var done = 0
        while done < bytes.count {
            let n = systemPwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw Self.fail("write", path)
            }
            done += n
        }
    }

    /// Flushes file data and metadata to stable storage (`F_FULLFSYNC` where plain fsync does not reach the disk).
    public static func sync(_ fd: Int32, path: String) throws(FileSystemError) {
        try FaultInjection.shared.check("fsync", path)
        #if canImport(Darwin)
        if fcntl(fd, F_FULLFSYNC) == 0 { return }
        #endif
        while systemFsync(fd) != 0 {
            if errno != EINTR { throw Self.fail("fsync", path) }
        }
    }

    /// fsync(2) of a directory, so that entries created, renamed, linked or removed in it are durable.
    public static func syncDirectory(_ path: String) throws(FileSystemError) {
        let fd = try Self.open(path, O_RDONLY | O_DIRECTORY)
        defer { Self.close(fd) }
        try Self.sync(fd, path: path)
    }

    /// The size of an open file.
    public static func size(_ fd: Int32, path: String) throws(FileSystemError) -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Self.fail("fstat", path) }
        return UInt64(st.st_size)
    }

    /// stat(2), or nil when the path does not exist.
    public static func status(_ path: String) throws(FileSystemError) -> stat? {
        var st = stat()
        if systemStat(path, &st) == 0 { return st }
        if errno == ENOENT || errno == ENOTDIR { return nil }
        throw Self.fail("stat", path)
    }

    /// The whole file, or nil when it does not exist. A file longer than `limit` bytes is an EFBIG error ("File too
    /// large"), never silently cut.
    public static func readFile(_ path: String, limit: Int = Int.max) throws(FileSystemError) -> [UInt8]? {
        guard let fd = try Self.openIfExists(path, O_RDONLY) else { return nil }
        defer { Self.close(fd) }
        return try Self.readAll(fd, path: path, limit: limit)
    }

    /// The whole file with the status of the descriptor actually read (not of whatever the path points to a moment
    /// later): its `FileFingerprint`, mode and owner.
    public static func readFileAndStatus(_ path: String) throws(FileSystemError) -> (bytes: [UInt8], status: stat) {
        let fd = try Self.open(path, O_RDONLY)
        defer { Self.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Self.fail("fstat", path) }
        return (try Self.readAll(fd, path: path, limit: Int.max, sizeHint: Int(max(st.st_size, 0))), st)
    }

    private static func readAll(_ fd: Int32, path: String, limit: Int, sizeHint: Int? = nil) throws(FileSystemError) -> [UInt8] {
        var expected = sizeHint ?? 0
        if sizeHint == nil { expected = Int(clamping: try Self.size(fd, path: path)) }
        var bytes = [UInt8](repeating: 0, count: min(expected, limit) + 1)
        var used = 0
        while true {
            if used == bytes.count {
                guard used <= limit else { throw Self.fail("read", path, EFBIG) }
                bytes.append(contentsOf: repeatElement(0, count: max(bytes.count, 4096)))
            }
            let n = try bytes.withUnsafeMutableBytes { raw in
                Result { () throws(FileSystemError) in
                    try Self.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: raw[used...]), path: path)
                }
            }.get()
            if n == 0 { break }
            used += n
        }
        guard used <= limit else { throw Self.fail("read", path, EFBIG) }
        bytes.removeSubrange(used...)
        return bytes
    }

    /// A read-write file with no name in the temporary folder (`TMPDIR`, else /tmp), for spooling: nothing to clean
    /// up after a crash, and it is gone once closed. O_TMPFILE, else create and unlink at once.
    public static func openUnnamedTemporaryFile() throws(FileSystemError) -> Int32 {
        let environment = getenv("TMPDIR").map { String(cString: $0) }
        let folder = environment.flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        #if os(Linux)
        // O_TMPFILE (__O_TMPFILE | O_DIRECTORY): Glibc does not export the macro to Swift.
        let fd = Glibc.open(folder, O_RDWR | O_CLOEXEC | 0o20_200_000, 0o600)
        if fd >= 0 { return fd }
        #endif
        var template = Array((folder + "/pop3d-spool-XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard made >= 0 else { throw Self.fail("mkstemp", folder, errno) }
        _ = fcntl(made, F_SETFD, FD_CLOEXEC)
        _ = systemUnlink(String(cString: template))
        return made
    }

    /// Replaces `path` atomically: a temporary file beside it, fsync, rename, fsync of the directory.
    public static func atomicReplace(_ path: String, with bytes: [UInt8], mode: mode_t = 0o600) throws(FileSystemError) {
        let temporary = path + ".tmp"
        let fd = try Self.open(temporary, O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
        do {
            try Self.write(fd, bytes, path: temporary)
            try Self.sync(fd, path: temporary)
        } catch {
            Self.close(fd)
            _ = systemUnlink(temporary)
            throw error
        }
        Self.close(fd)
        do {
            try Self.rename(temporary, path)
        } catch {
            _ = systemUnlink(temporary)
            throw error
        }
        try Self.syncDirectory(Self.parent(of: path))
    }

    /// Every name in a directory but "." and "..", or nil when it does not exist.
    public static func entries(in path: String) throws(FileSystemError) -> [String]? {
        try Self.list(path, filesOnly: false)
    }

    /// The names of a directory's files: dot files and subdirectories skipped, or nil when it does not exist.
    /// One readdir pass, no stat per entry.
    public static func files(in path: String) throws(FileSystemError) -> [String]? {
        try Self.list(path, filesOnly: true)
    }

    private static func list(_ path: String, filesOnly: Bool) throws(FileSystemError) -> [String]? {
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
            let name = (UnsafeRawPointer(entry) + nameOffset).assumingMemoryBound(to: CChar.self)
            if filesOnly {
                if Int(entry.pointee.d_type) == Int(DT_DIR) { continue }
                if name.pointee == 0x2E { continue }  // ".", "..", and hidden files
            } else if name.pointee == 0x2E && (name[1] == 0 || (name[1] == 0x2E && name[2] == 0)) {
                continue
            }
            names.append(String(cString: name))
        }
        return names
    }

    /// mkdir(2); an existing directory is fine. Returns whether it was created.
    @discardableResult
    public static func makeDirectory(_ path: String, mode: mode_t = 0o700) throws(FileSystemError) -> Bool {
        if mkdir(path, mode) == 0 { return true }
        if errno == EEXIST { return false }
        throw Self.fail("mkdir", path)
    }

    /// `mkdir -p`, each new directory made durable in its parent. An existing directory is left as it is (an
    /// existing non-directory is ENOTDIR). Returns whether `path` itself was created.
    @discardableResult
    public static func makeDirectories(_ path: String, mode: mode_t = 0o700) throws(FileSystemError) -> Bool {
        if let st = try Self.status(path) {
            guard st.st_mode & S_IFMT == S_IFDIR else { throw Self.fail("mkdir", path, ENOTDIR) }
            return false
        }
        let parent = Self.parent(of: path)
        if parent != path { try Self.makeDirectories(parent, mode: mode) }
        guard try Self.makeDirectory(path, mode: mode) else { return false }
        try Self.syncDirectory(parent)
        return true
    }

    /// The folder part of a path ("." for a bare name, "/" for the root).
    public static func parent(of path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed.removeLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        if slash == trimmed.startIndex { return "/" }
        return String(trimmed[..<slash])
    }

    public static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    /// unlink(2). Returns false when the file was already gone.
    @discardableResult
    public static func unlink(_ path: String) throws(FileSystemError) -> Bool {
        try FaultInjection.shared.check("unlink", path)
        if systemUnlink(path) == 0 { return true }
        if errno == ENOENT { return false }
        throw Self.fail("unlink", path)
    }

    public static func rename(_ from: String, _ to: String) throws(FileSystemError) {
        guard systemRename(from, to) == 0 else { throw Self.fail("rename", from + " -> " + to) }
    }
}

// FileSystem's own names shadow libc's; these reach the originals.
private func systemOpen(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { open(path, flags, mode) }
private func systemClose(_ fd: Int32) -> Int32 { close(fd) }
private func systemRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int { read(fd, buffer, count) }
private func systemPread(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int, _ offset: off_t) -> Int {
    pread(fd, buffer, count, offset)
}
private func systemWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int { write(fd, buffer, count) }
private func systemPwrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int, _ offset: off_t) -> Int {
    pwrite(fd, buffer, count, offset)
}
private func systemFsync(_ fd: Int32) -> Int32 { fsync(fd) }
private func systemUnlink(_ path: String) -> Int32 { unlink(path) }
private func systemRename(_ from: String, _ to: String) -> Int32 { rename(from, to) }
private func systemStat(_ path: String, _ st: inout stat) -> Int32 { stat(path, &st) }
