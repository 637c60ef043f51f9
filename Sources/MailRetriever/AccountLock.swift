import SystemIO
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

public enum AccountLockError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Another fetch for this account is running.
    case busy

    public var description: String { "another fetch for this account is running" }
}

/// One fetch at a time per account: `flock(LOCK_EX|LOCK_NB)` on `<dir>/<stem>.lock`.
///
/// Released by `release()`, on deinit, and by the kernel when the process dies (kill -9 included), so a crashed
/// fetch never leaves a stale lock. The lock file itself stays; it holds the holder's pid for people to read.
/// flock locks belong to the open file description, so a second `acquire` in the same process is refused too.
public final class AccountLock {
    public let path: String
    private var fd: Int32

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    public static func acquire(_ key: AccountKey, stateDirectory: String) throws -> AccountLock {
        let path = FileSystem.join(stateDirectory, key.fileStem + ".lock")
        let fd = try FileSystem.open(path, O_RDWR | O_CREAT, mode: 0o600)
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            if code == EINTR { continue }
            FileSystem.close(fd)
            if code == EWOULDBLOCK || code == EAGAIN { throw AccountLockError.busy }
            throw FileSystemError("flock", path: path, errno: code)
        }
        // Informational only; a failure here does not matter.
        if ftruncate(fd, 0) == 0 {
            try? FileSystem.write(fd, Array("\(getpid())\n".utf8), path: path)
        }
        return AccountLock(path: path, fd: fd)
    }

    public func release() {
        guard fd >= 0 else { return }
        FileSystem.close(fd)  // closing the only descriptor drops the flock
        fd = -1
    }

    deinit {
        release()
    }
}
