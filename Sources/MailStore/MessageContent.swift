import Logging
import NIOCore
import NIOPosix
import Synchronization

/// The bytes of one message as stored, pulled one chunk at a time: nothing is read until the consumer asks for the
/// next chunk, so a slow client holds at most one chunk in memory.
///
/// Single pass: iterators share the underlying reader.
public struct MessageContent: AsyncSequence, Sendable {
    public typealias Element = ByteBuffer

    private let nextChunk: @Sendable () async throws -> ByteBuffer?

    /// A content stream over any pull-based chunk source; `nextChunk` returns `nil` at the end.
    public init(nextChunk: @escaping @Sendable () async throws -> ByteBuffer?) {
        self.nextChunk = nextChunk
    }

    /// A content stream over bytes already in memory (the in-memory store, tests).
    public init(bytes: [UInt8], chunkSize: Int) {
        let cursor = ByteCursor(bytes: bytes, chunkSize: Swift.max(chunkSize, 1))
        self.nextChunk = { cursor.next() }
    }

    /// A content stream over an open file descriptor, read on `threadPool`; takes ownership of `fd`.
    init(fileDescriptor fd: Int32, path: String, chunkSize: Int, threadPool: NIOThreadPool, logger: Logger) {
        let reader = FileChunkReader(fd: fd, path: path, chunkSize: Swift.max(chunkSize, 1), logger: logger)
        self.nextChunk = {
            try await threadPool.runIfActive { try reader.readChunk() }
        }
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        private let nextChunk: @Sendable () async throws -> ByteBuffer?
        private var finished = false

        fileprivate init(nextChunk: @escaping @Sendable () async throws -> ByteBuffer?) {
            self.nextChunk = nextChunk
        }

        public mutating func next() async throws -> ByteBuffer? {
            guard !self.finished else { return nil }
            do {
                guard let chunk = try await self.nextChunk() else {
                    self.finished = true
                    return nil
                }
                return chunk
            } catch {
                self.finished = true
                throw error
            }
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(nextChunk: self.nextChunk)
    }
}

/// Owns a message file descriptor: reads it chunk by chunk (blocking: call on the thread pool), closes it at end of
/// file, on a read error, or when the last reference (content or iterator) goes away.
final class FileChunkReader: Sendable {
    private let fd: Mutex<Int32>
    private let path: String
    private let chunkSize: Int
    private let logger: Logger

    init(fd: Int32, path: String, chunkSize: Int, logger: Logger) {
        self.fd = Mutex(fd)
        self.path = path
        self.chunkSize = chunkSize
        self.logger = logger
    }

    func readChunk() throws -> ByteBuffer? {
        let outcome = self.fd.withLock { fd -> Result<ByteBuffer?, FileSystemError> in
            guard fd >= 0 else { return .success(nil) }
            let result = Self.read(fd, chunkSize: self.chunkSize, path: self.path)
            switch result {
            case .success(.some):
                break
            case .success(.none), .failure:
                FileSystem.close(fd)
                fd = -1
            }
            return result
        }
        switch outcome {
        case .success(let chunk):
            return chunk
        case .failure(let error):
            self.logger.error("cannot read message file", metadata: ["error": "\(error)"])
            throw MaildropError.temporary("message could not be read")
        }
    }

    private static func read(_ fd: Int32, chunkSize: Int, path: String) -> Result<ByteBuffer?, FileSystemError> {
        var buffer = ByteBufferAllocator().buffer(capacity: chunkSize)
        var result: Result<Int, FileSystemError> = .success(0)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: chunkSize) { raw -> Int in
            result = Result { () throws(FileSystemError) in
                try FileSystem.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: raw[..<chunkSize]), path: path)
            }
            return (try? result.get()) ?? 0
        }
        return result.map { $0 == 0 ? nil : buffer }
    }

    deinit {
        self.fd.withLock { fd in
            if fd >= 0 { FileSystem.close(fd) }
            fd = -1
        }
    }
}

/// Hands out slices of an in-memory message, one chunk per call.
private final class ByteCursor: Sendable {
    private let bytes: [UInt8]
    private let chunkSize: Int
    private let offset = Mutex(0)

    init(bytes: [UInt8], chunkSize: Int) {
        self.bytes = bytes
        self.chunkSize = chunkSize
    }

    func next() -> ByteBuffer? {
        self.offset.withLock { offset -> ByteBuffer? in
            guard offset < self.bytes.count else { return nil }
            let end = Swift.min(offset + self.chunkSize, self.bytes.count)
            defer { offset = end }
            return ByteBuffer(bytes: self.bytes[offset..<end])
        }
    }
}
