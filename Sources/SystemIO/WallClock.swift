#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Wall-clock time of a stat's mtime or ctime or of "now", in nanoseconds since the epoch.
public enum WallClock {
    public static func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Self.nanoseconds(ts)
    }

    public static func changeTime(_ st: stat) -> Int64 {
        #if canImport(Darwin)
        return Self.nanoseconds(st.st_ctimespec)
        #else
        return Self.nanoseconds(st.st_ctim)
        #endif
    }

    public static func modificationTime(_ st: stat) -> Int64 {
        #if canImport(Darwin)
        return Self.nanoseconds(st.st_mtimespec)
        #else
        return Self.nanoseconds(st.st_mtim)
        #endif
    }

    static func nanoseconds(_ time: timespec) -> Int64 {
        Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }
}
