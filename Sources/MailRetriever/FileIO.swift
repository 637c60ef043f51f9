#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A failed system call on a file, with the path and `errno`.
public struct FileSystemError: Error, Sendable, Equatable, CustomStringConvertible {
    public var operation: String
    public var path: String
    public var errno: Int32

    public init(_ operation: String, path: String, errno: Int32) {
        self.operation = operation
        self.path = path
        self.errno = errno
    }

    public var description: String {
        "\(operation) \(path): \(String(cString: strerror(errno)))"
    }
}

/// Thin, EINTR-safe wrappers over the POSIX calls the retriever needs. Every durable step goes through here.
enum FileIO {
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o600) throws -> Int32 {
        while true {
            let fd = systemOpen(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno == EINTR { continue }
            throw FileSystemError("open", path: path, errno: errno)
        }
    }

    static func close(_ fd: Int32) {
        _ = systemClose(fd)
    }

    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        var done = 0
        while done < bytes.count {
            let n = systemWrite(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw FileSystemError("write", path: path, errno: errno)
            }
            done += n
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws {
        try bytes.withUnsafeBytes { try writeAll(fd, $0, path: path) }
    }

    static func pwriteAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64, path: String) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw FileSystemError("write", path: path, errno: errno)
            }
            done += n
        }
    }

    /// Reads up to `buffer.count` bytes at `offset`; returns the count (0 at end of file).
    static func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, path: String) throws
        -> Int
    {
        while true {
            let n = systemPread(fd, buffer.baseAddress!, buffer.count, off_t(offset))
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw FileSystemError("read", path: path, errno: errno)
        }
    }

    static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, path: String) throws -> Int {
        while true {
            let n = systemRead(fd, buffer.baseAddress!, buffer.count)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw FileSystemError("read", path: path, errno: errno)
        }
    }

    /// Flushes file data and metadata to stable storage (`F_FULLFSYNC` where plain fsync does not reach the disk).
    static func sync(_ fd: Int32, path: String) throws {
        #if canImport(Darwin)
            if fcntl(fd, F_FULLFSYNC) == 0 { return }
        #endif
        while fsync(fd) != 0 {
            if errno == EINTR { continue }
            throw FileSystemError("fsync", path: path, errno: errno)
        }
    }

    /// Makes a directory's entries (a create, rename, link or unlink in it) durable.
    static func syncDirectory(_ path: String) throws {
        let fd = try open(path, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        try sync(fd, path: path)
    }

    static func size(_ fd: Int32, path: String) throws -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw FileSystemError("fstat", path: path, errno: errno) }
        return UInt64(st.st_size)
    }

    /// `stat(2)`, or nil when the path does not exist.
    static func status(_ path: String) throws -> stat? {
        var st = stat()
        if stat(path, &st) == 0 { return st }
        if errno == ENOENT || errno == ENOTDIR { return nil }
        throw FileSystemError("stat", path: path, errno: errno)
    }

    /// The whole file, or nil when it does not exist.
    static func readFile(_ path: String, limit: Int = Int.max) throws -> [UInt8]? {
        let fd: Int32
        do {
            fd = try open(path, O_RDONLY)
        } catch let error as FileSystemError where error.errno == ENOENT {
            return nil
        }
        defer { close(fd) }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while result.count < limit {
            let n = try chunk.withUnsafeMutableBytes { try read(fd, into: $0, path: path) }
            if n == 0 { break }
            result.append(contentsOf: chunk[0..<n])
        }
        return result
    }

    /// Replaces `path` atomically: temp file beside it, fsync, rename, fsync the directory.
    static func atomicReplace(_ path: String, with bytes: [UInt8], mode: mode_t = 0o600) throws {
        let temp = path + ".tmp"
        let fd = try open(temp, O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
        do {
            try writeAll(fd, bytes, path: temp)
            try sync(fd, path: temp)
        } catch {
            close(fd)
            _ = unlink(temp)
            throw error
        }
        close(fd)
        guard rename(temp, path) == 0 else {
            let code = errno
            _ = unlink(temp)
            throw FileSystemError("rename", path: path, errno: code)
        }
        try syncDirectory(directoryName(path))
    }

    /// Creates `path` (and missing parents) with `mode`; an existing directory is left as it is.
    /// Returns true when something was created, after making the new entries durable.
    @discardableResult
    static func makeDirectories(_ path: String, mode: mode_t = 0o700) throws -> Bool {
        if let st = try status(path) {
            guard (st.st_mode & S_IFMT) == S_IFDIR else { throw FileSystemError("mkdir", path: path, errno: ENOTDIR) }
            return false
        }
        let parent = directoryName(path)
        if parent != path { try makeDirectories(parent, mode: mode) }
        if mkdir(path, mode) != 0 && errno != EEXIST {
            throw FileSystemError("mkdir", path: path, errno: errno)
        }
        try syncDirectory(parent)
        return true
    }

    static func directoryName(_ path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        if slash == trimmed.startIndex { return "/" }
        return String(trimmed[trimmed.startIndex..<slash])
    }

    static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    /// Names in a directory (without "." and "..").
    static func listDirectory(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw FileSystemError("opendir", path: path, errno: errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }
}

// The libc names are shadowed by FileIO's own; these reach the originals.
private func systemOpen(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { open(path, flags, mode) }
private func systemClose(_ fd: Int32) -> Int32 { close(fd) }
private func systemWrite(_ fd: Int32, _ buf: UnsafeRawPointer, _ count: Int) -> Int { write(fd, buf, count) }
private func systemRead(_ fd: Int32, _ buf: UnsafeMutableRawPointer, _ count: Int) -> Int { read(fd, buf, count) }
private func systemPread(_ fd: Int32, _ buf: UnsafeMutableRawPointer, _ count: Int, _ offset: off_t) -> Int {
    pread(fd, buf, count, offset)
}

/// Buffered writes to a file descriptor, optionally hashing what goes through; memory stays at one buffer.
final class BufferedFileWriter {
    let fd: Int32
    let path: String
    private var buffer: [UInt8] = []
    private let capacity: Int
    private(set) var bytesWritten: UInt64 = 0

    init(fd: Int32, path: String, capacity: Int = 65536) {
        self.fd = fd
        self.path = path
        self.capacity = capacity
        buffer.reserveCapacity(capacity)
    }

    func append(_ byte: UInt8) throws {
        buffer.append(byte)
        if buffer.count >= capacity { try flush() }
    }

    func append<S: Sequence>(contentsOf bytes: S) throws where S.Element == UInt8 {
        buffer.append(contentsOf: bytes)
        if buffer.count >= capacity { try flush() }
    }

    func flush() throws {
        guard !buffer.isEmpty else { return }
        try FileIO.writeAll(fd, buffer, path: path)
        bytesWritten += UInt64(buffer.count)
        buffer.removeAll(keepingCapacity: true)
    }
}
