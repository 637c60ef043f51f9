#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What identifies one version of a file cheaply: an editor's rename changes the inode, an in-place write changes
/// size or mtime.
struct FileFingerprint: Equatable, Sendable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modificationSeconds: Int64
    var modificationNanoseconds: Int64

    init(_ st: stat) {
        self.device = UInt64(st.st_dev)
        self.inode = UInt64(st.st_ino)
        self.size = Int64(st.st_size)
        #if canImport(Darwin)
        self.modificationSeconds = Int64(st.st_mtimespec.tv_sec)
        self.modificationNanoseconds = Int64(st.st_mtimespec.tv_nsec)
        #else
        self.modificationSeconds = Int64(st.st_mtim.tv_sec)
        self.modificationNanoseconds = Int64(st.st_mtim.tv_nsec)
        #endif
    }
}

/// Thin, EINTR-safe wrappers over the few POSIX calls the passwd-file code needs. Errors are `strerror` texts.
enum POSIXFile {
    struct Failure: Error {
        var operation: String
        var errnoValue: Int32
        var reason: String { "\(self.operation): \(String(cString: strerror(self.errnoValue)))" }
    }

    static func fail(_ operation: String) -> Failure {
        Failure(operation: operation, errnoValue: errno)
    }

    static func status(path: String) throws(Failure) -> stat {
        var st = stat()
        guard stat(path, &st) == 0 else { throw Self.fail("stat") }
        return st
    }

    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0) throws(Failure) -> Int32 {
        while true {
            let fd = systemOpen(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno != EINTR { throw Self.fail("open") }
        }
    }

    /// Reads the whole file and returns it with the fingerprint of the descriptor actually read
    /// (not of whatever the path points to a moment later).
    static func readAll(path: String) throws(Failure) -> (bytes: [UInt8], fingerprint: FileFingerprint, st: stat) {
        let fd = try Self.open(path, O_RDONLY)
        defer { _ = close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Self.fail("fstat") }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(max(st.st_size, 0)) + 1)
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count == 0 { break }
            if count < 0 {
                if errno == EINTR { continue }
                throw Self.fail("read")
            }
            bytes.append(contentsOf: chunk[..<count])
        }
        return (bytes, FileFingerprint(st), st)
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(Failure) {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { buffer in
                write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            }
            if count < 0 {
                if errno == EINTR { continue }
                throw Self.fail("write")
            }
            offset += count
        }
    }

    static func fsync(_ fd: Int32) throws(Failure) {
        while systemFsync(fd) != 0 {
            if errno != EINTR { throw Self.fail("fsync") }
        }
    }
}

private func systemOpen(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { open(path, flags, mode) }
private func systemFsync(_ fd: Int32) -> Int32 { fsync(fd) }
