#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Who this process is, for lock files, Maildir unique names and trace headers.
public enum ProcessIdentity {
    public static let pid: pid_t = getpid()

    /// The host name, as gethostname(2) gives it ("localhost" when it has none).
    public static let hostname: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }()

    /// When this module was first used by the process (the Maildir provider touches it at init). A lock file holding
    /// our own pid but older than this was left by an earlier process that had the same pid (pid 1 in a container).
    public static let startTime: Int64 = WallClock.now()

    /// Whether `pid` names a live process on this host: kill(pid, 0) fails with ESRCH only for a dead one.
    public static func isAlive(_ pid: pid_t) -> Bool {
        guard pid > 0 else { return false }
        if kill(pid, 0) == 0 { return true }
        return errno != ESRCH
    }
}
