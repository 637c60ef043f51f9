import CPrivSep
import Logging
import MailStore
import NIOCore
import NIOPosix
import POP3Core
import Synchronization
import SystemIO

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// pop3d's side of a maildrop served by a mail worker. Requests run on `rpcPool` (they block on the worker's
/// socket); message bytes are read straight from the descriptor the worker opened, on `readPool`.
public final class WorkerMaildrop: Maildrop {
    public let messages: [MaildropMessage]
    private let channel: WorkerChannel
    private let rpcPool: NIOThreadPool
    private let readPool: NIOThreadPool
    private let logger: Logger
    private let finished = Atomic<Bool>(false)

    private init(messages: [MaildropMessage], channel: WorkerChannel, rpcPool: NIOThreadPool, readPool: NIOThreadPool, logger: Logger) {
        self.messages = messages
        self.channel = channel
        self.rpcPool = rpcPool
        self.readPool = readPool
        self.logger = logger
    }

    /// Opens the maildrop at `path` through the worker connected to `socket` (taken over: closed on failure).
    public static func open(
        socket: Int32,
        user: String,
        path: String,
        rpcPool: NIOThreadPool,
        readPool: NIOThreadPool,
        logger: Logger,
        maximumMessages: Int = Int(UInt32.max),
        replyTimeoutSeconds: Int = MaildropWorker.replyTimeoutSeconds
    ) async throws -> WorkerMaildrop {
        let channel = WorkerChannel(socket: socket)
        channel.setReceiveTimeout(seconds: replyTimeoutSeconds)
        let reply: WorkerMessage
        do {
            reply = try await rpcPool.runIfActive {
                try channel.send(.open(user: user, path: path, maximumMessages: maximumMessages))
                return try channel.receive().0
            }
        } catch {
            channel.close()
            throw Self.transportError(error, logger: logger, operation: "open maildrop")
        }
        switch reply {
        case .opened(let messages):
            return WorkerMaildrop(messages: messages, channel: channel, rpcPool: rpcPool, readPool: readPool, logger: logger)
        case .failed(let error):
            channel.close()
            throw error
        default:
            channel.close()
            throw Self.transportError(WorkerChannelError.malformed("unexpected reply to open"), logger: logger, operation: "open maildrop")
        }
    }

    public func content(ofMessageAt index: Int, chunkSize: Int) async throws -> MessageContent {
        guard self.messages.indices.contains(index) else { throw MaildropError.permanent("no such message") }
        let channel = self.channel, logger = self.logger
        let opened: (reader: FileChunkReader, first: ByteBuffer?)
        do {
            opened = try await self.rpcPool.runIfActive { () throws -> (reader: FileChunkReader, first: ByteBuffer?) in
                try channel.send(.content(index: index))
                let (reply, descriptor) = try channel.receive()
                if case .failed(let error) = reply { throw error }
                guard reply == .contentFollows, let descriptor else { throw WorkerChannelError.malformed("unexpected reply to content") }
                // The worker runs as the account, which could make it hand over anything: only a regular file is read.
                guard FileSystem.isRegularFile(descriptor) else {
                    FileSystem.close(descriptor)
                    throw WorkerChannelError.malformed("the message descriptor is not a regular file")
                }
                let reader = FileChunkReader(fd: descriptor, path: "message \(index + 1)", chunkSize: max(chunkSize, 1), logger: logger)
                return (reader, try reader.readChunk())
            }
        } catch let error as MaildropError {
            throw error  // the worker answered: the connection is still in step
        } catch {
            // A timeout, a malformed or missing reply: a late reply could still arrive and be taken for the answer
            // to the next request, so the connection is closed and every later request fails.
            channel.close()
            throw Self.transportError(error, logger: logger, operation: "open message")
        }
        return MessageContent(reader: opened.reader, first: opened.first, threadPool: self.readPool)
    }

    public func commit(deleting indices: Set<Int>) async throws {
        guard !self.finished.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let channel = self.channel
        defer { channel.close() }
        let reply: WorkerMessage
        do {
            reply = try await self.rpcPool.runIfActive {
                try channel.send(.commit(indices: indices.sorted()))
                return try channel.receive().0
            }
        } catch {
            throw Self.transportError(error, logger: self.logger, operation: "commit")
        }
        switch reply {
        case .done: return
        case .failed(let error): throw error
        default: throw Self.transportError(WorkerChannelError.malformed("unexpected reply to commit"), logger: self.logger, operation: "commit")
        }
    }

    public func release() async {
        guard !self.finished.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let channel = self.channel
        // Closing alone releases too (the worker sees end of stream); asking first lets the lock go before we return.
        _ = try? await self.rpcPool.runIfActive {
            try channel.send(.release)
            _ = try channel.receive()
        }
        channel.close()
    }

    private static func transportError(_ error: any Error, logger: Logger, operation: String) -> MaildropError {
        logger.error("\(operation) failed: mail worker", metadata: ["error": "\(error)"])
        return .temporary("maildrop temporarily unavailable")
    }
}
