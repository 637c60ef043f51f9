#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A failed system call on a file: the operation, the path and `errno`. It carries the path, so it belongs in logs
/// and local error messages only; what reaches a POP3 client is a protocol error without it.
public struct FileSystemError: Error, Sendable, Equatable, CustomStringConvertible {
    public var operation: String
    public var path: String
    public var errno: Int32

    public init(_ operation: String, path: String, errno: Int32) {
        self.operation = operation
        self.path = path
        self.errno = errno
    }

    /// The operation and the system's text for `errno`, without the path: "open: No such file or directory".
    public var reason: String { "\(self.operation): \(String(cString: strerror(self.errno)))" }

    public var description: String {
        "\(self.operation) \(self.path): \(String(cString: strerror(self.errno))) (errno \(self.errno))"
    }
}
