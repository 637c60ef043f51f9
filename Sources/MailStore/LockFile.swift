import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A dotlock: a file created with `O_CREAT|O_EXCL` whose existence is the lock. Holds no descriptor while held.
struct LockFile: Sendable {
    let path: String
    /// Inode of the file we created, so that release never removes somebody else's lock.
    let inode: UInt64

    enum Outcome {
        case acquired(LockFile)
        /// The file exists: its contents (possibly empty or partial) and its status.
        case held(contents: [UInt8], status: stat)
    }

    /// One attempt to create the lock file holding `contents`.
    ///
    /// The contents are written to a private temporary file first, which is then published with link(2) (as
    /// Dovecot's dotlocks do): the lock never exists without its owner's pid, so a process killed while taking it
    /// leaves no empty lock that would look held until it is old (a kill -9 between create and write used to
    /// block indexing for two minutes). Where the file system refuses hard links, the lock is created in place
    /// with O_EXCL.
    static func tryCreate(_ path: String, contents: String) throws(FileSystemError) -> Outcome {
        while true {
            let published: LockFile?
            do {
                published = try Self.publish(path, contents: contents)
            } catch where error.errnoValue == EEXIST {
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

    /// Creates the lock at `path` with its contents complete, or throws EEXIST when somebody holds it.
    private static func publish(_ path: String, contents: String) throws(FileSystemError) -> LockFile? {
        let serial = Self.temporaryCounter.wrappingAdd(1, ordering: .relaxed).oldValue
        let temporary = "\(path).\(ProcessIdentity.pid).\(serial).tmp"
        let fd = try FileSystem.open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
        var st = stat()
        let statusOK = fstat(fd, &st) == 0
        defer { _ = try? FileSystem.unlink(temporary) }
        do {
            try FileSystem.write(fd, Array(contents.utf8), path: temporary)
        } catch {
            FileSystem.close(fd)
            throw error
        }
        FileSystem.close(fd)
        if link(temporary, path) == 0 { return LockFile(path: path, inode: statusOK ? UInt64(st.st_ino) : 0) }
        let code = errno
        guard code == EPERM || code == ENOTSUP || code == EOPNOTSUPP else { throw FileSystem.fail("link", path, code) }
        // No hard links here: create in place (a crash between create and write can leave an empty lock, which
        // ages out as unparsable).
        let direct = try FileSystem.open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
        var directStatus = stat()
        let directOK = fstat(direct, &directStatus) == 0
        do {
            try FileSystem.write(direct, Array(contents.utf8), path: path)
        } catch {
            FileSystem.close(direct)
            _ = try? FileSystem.unlink(path)
            throw error
        }
        FileSystem.close(direct)
        return LockFile(path: path, inode: directOK ? UInt64(directStatus.st_ino) : 0)
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
        if self.inode != 0 {
            guard let current = try FileSystem.status(self.path), UInt64(current.st_ino) == self.inode else { return }
        }
        try FileSystem.unlink(self.path)
    }
}
