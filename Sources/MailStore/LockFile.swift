import Synchronization
import SystemIO

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A dotlock: a file whose existence is the lock, holding its owner's "pid host". It gets its name only once its
/// contents are written (see `tryCreate`). Holds no descriptor while held.
struct LockFile: Sendable {
    let path: String
    /// Device and inode of the file we created, so that release never removes somebody else's lock.
    let device: UInt64
    let inode: UInt64

    init(path: String, status: stat) {
        self.path = path
        self.device = UInt64(status.st_dev)
        self.inode = UInt64(status.st_ino)
    }

    enum Outcome {
        case acquired(LockFile)
        /// The file exists: its contents (possibly empty or partial) and its status.
        case held(contents: [UInt8], status: stat)
    }

    /// One attempt to create the lock file holding `contents`.
    ///
    /// The contents are written first and the file named afterwards, by linkat(2) of an unnamed (O_TMPFILE) file or
    /// by link(2) of a temporary name (as Dovecot's dotlocks do), which fails if the lock exists: the lock never
    /// exists without its owner's pid, so a process killed while taking it leaves no empty lock that would look
    /// held until it is old (a kill -9 between create and write used to block indexing for two minutes). Where the
    /// file system refuses hard links, the lock is created in place with O_EXCL.
    /// `unnamed: false` skips the O_TMPFILE way (tests of the other one).
    static func tryCreate(_ path: String, contents: String, unnamed: Bool = true) throws(FileSystemError) -> Outcome {
        while true {
            let published: LockFile?
            do {
                published = try Self.publish(path, contents: contents, unnamed: unnamed)
            } catch where error.errno == EEXIST {
                published = nil
            }
            if let published { return .acquired(published) }
            // Held: read what is there; if it vanished in between, try again.
            guard let existing = try FileSystem.openIfExists(path, O_RDONLY | O_NOFOLLOW) else { continue }
            defer { FileSystem.close(existing) }
            var st = stat()
            guard fstat(existing, &st) == 0 else { throw FileSystem.fail("fstat", path) }
            var buffer = [UInt8](repeating: 0, count: 256)
            let count = try buffer.withUnsafeMutableBytes { raw in
                Result { () throws(FileSystemError) in try FileSystem.read(existing, into: raw, path: path) }
            }.get()
            return .held(contents: Array(buffer[..<count]), status: st)
        }
    }

    private static let temporaryCounter = Atomic<Int>(0)

    /// open(2) flags for an unnamed file in a directory (O_TMPFILE = __O_TMPFILE | O_DIRECTORY, which Swift does not
    /// import), where known.
    #if os(Linux) && (arch(x86_64) || arch(arm64))
        private static let openAnonymous: Int32? = O_WRONLY | 0o20000000 | O_DIRECTORY
    #else
        private static let openAnonymous: Int32? = nil
    #endif

    /// Creates the lock at `path` with its contents complete, or throws EEXIST when somebody holds it.
    private static func publish(_ path: String, contents: String, unnamed: Bool) throws(FileSystemError) -> LockFile? {
        if unnamed, let published = try Self.publishUnnamed(path, contents: contents) { return published }
        return try Self.publishThroughTemporaryName(path, contents: contents)
    }

    /// The cheap way where the file system has O_TMPFILE and /proc is mounted: an unnamed file, written, then named
    /// with linkat(2) (one directory change, no temporary name to remove). nil: not available here.
    private static func publishUnnamed(_ path: String, contents: String) throws(FileSystemError) -> LockFile? {
        guard let flags = Self.openAnonymous else { return nil }
        let fd: Int32
        do {
            fd = try FileSystem.open(FileSystem.parent(of: path), flags, mode: 0o600)
        } catch where error.errno == ENOENT {
            throw error  // the folder is missing: the caller creates the Maildir
        } catch {
            return nil  // EOPNOTSUPP, EISDIR, EINVAL: no unnamed files on this file system
        }
        defer { FileSystem.close(fd) }
        let st = try Self.write(contents, to: fd, path: path)
        if linkat(AT_FDCWD, "/proc/self/fd/\(fd)", AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0 {
            return LockFile(path: path, status: st)
        }
        if errno == EEXIST { throw FileSystem.fail("link", path, EEXIST) }
        return nil  // no /proc, or links refused: take the other way
    }

    private static func publishThroughTemporaryName(_ path: String, contents: String) throws(FileSystemError) -> LockFile? {
        let serial = Self.temporaryCounter.wrappingAdd(1, ordering: .relaxed).oldValue
        let temporary = "\(path).\(ProcessIdentity.pid).\(serial).tmp"
        let fd = try FileSystem.open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
        defer { _ = try? FileSystem.unlink(temporary) }
        let st: stat
        do {
            st = try Self.write(contents, to: fd, path: temporary)
        } catch {
            FileSystem.close(fd)
            throw error
        }
        FileSystem.close(fd)
        if link(temporary, path) == 0 { return LockFile(path: path, status: st) }
        let code = errno
        guard code == EPERM || code == ENOTSUP || code == EOPNOTSUPP else { throw FileSystem.fail("link", path, code) }
        // No hard links here: create in place (a crash between create and write can leave an empty lock, which
        // ages out as unparsable).
        let direct = try FileSystem.open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
        let directStatus: stat
        do {
            directStatus = try Self.write(contents, to: direct, path: path)
        } catch {
            FileSystem.close(direct)
            _ = try? FileSystem.unlink(path)
            throw error
        }
        FileSystem.close(direct)
        return LockFile(path: path, status: directStatus)
    }

    /// Writes the lock's contents to `fd` and returns the file's status (its device and inode identify our lock).
    private static func write(_ contents: String, to fd: Int32, path: String) throws(FileSystemError) -> stat {
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw FileSystem.fail("fstat", path) }
        try FileSystem.write(fd, Array(contents.utf8), path: path)
        return status
    }

    /// Removes a lock file judged stale, unless it was replaced since it was inspected (same inode still there).
    static func breakStale(_ path: String, inspected: stat) throws(FileSystemError) -> Bool {
        guard let current = try FileSystem.status(path) else { return true }
        guard current.st_ino == inspected.st_ino, current.st_dev == inspected.st_dev else { return false }
        try FileSystem.unlink(path)
        return true
    }

    /// Removes the lock file if it is still the one we created.
    func release() throws(FileSystemError) {
        guard let current = try FileSystem.status(self.path),
            UInt64(current.st_ino) == self.inode, UInt64(current.st_dev) == self.device
        else { return }
        try FileSystem.unlink(self.path)
    }
}
