import Logging
import NIOCore
import NIOPosix
import Synchronization
import SystemIO

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

    /// A content stream over a message file, read on `threadPool`, whose first chunk was read when it was opened
    /// (`first`, nil for an empty file). A message that fits in one chunk thus costs one thread-pool hop in all.
    package init(reader: FileChunkReader, first: ByteBuffer?, threadPool: NIOThreadPool) {
        let pending = Mutex<ByteBuffer?>(first)
        self.nextChunk = {
            if let chunk = pending.withLock({ $0.take() }) { return chunk }
            if reader.isFinished { return nil }
            return try await threadPool.runIfActive { try reader.readChunk() }
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
/// file, on a read error, or when the last reference (content or iterator) goes away. Each chunk is filled to
/// `chunkSize` unless the file ends first; the end is seen in the same call (a short read is followed by the read
/// that returns 0), so that no extra hop to the pool is needed to learn it.
package final class FileChunkReader: Sendable {
    private let fd: Mutex<Int32>
    private let path: String
    private let chunkSize: Int
    private let logger: Logger

    package init(fd: Int32, path: String, chunkSize: Int, logger: Logger) {
        self.fd = Mutex(fd)
        self.path = path
        self.chunkSize = chunkSize
        self.logger = logger
    }

    /// Whether the end of the file was reached (or reading failed): no more chunks.
    package var isFinished: Bool { self.fd.withLock { $0 < 0 } }

    package func readChunk() throws -> ByteBuffer? {
        let outcome = self.fd.withLock { fd -> Result<ByteBuffer?, FileSystemError> in
            guard fd >= 0 else { return .success(nil) }
            let result = Self.read(fd, chunkSize: self.chunkSize, path: self.path)
            if case .success((_, atEnd: false)) = result { return result.map(\.chunk) }
            FileSystem.close(fd)
            fd = -1
            return result.map(\.chunk)
        }
        switch outcome {
        case .success(let chunk):
            return chunk
        case .failure(let error):
            self.logger.error("cannot read message file", metadata: ["error": "\(error)"])
            throw MaildropError.temporary("message could not be read")
        }
    }

    private static func read(
        _ fd: Int32,
        chunkSize: Int,
        path: String
    ) -> Result<(chunk: ByteBuffer?, atEnd: Bool), FileSystemError> {
        var buffer = ByteBufferAllocator().buffer(capacity: chunkSize)
        var result: Result<Bool, FileSystemError> = .success(false)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: chunkSize) { raw -> Int in
            var filled = 0
            result = Result { () throws(FileSystemError) -> Bool in
                while filled < chunkSize {
                    let count = try FileSystem.read(
                        fd,
                        into: UnsafeMutableRawBufferPointer(rebasing: raw[filled..<chunkSize]),
                        path: path
                    )
                    if count == 0 { return true }
                    filled += count
                }
                return false
            }
            return filled
        }
        return result.map { atEnd in (buffer.readableBytes == 0 ? nil : buffer, atEnd) }
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
