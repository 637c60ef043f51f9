import CPrivSep
import Logging
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

/// One message between pop3d and a mail worker: the process that opens one account's maildrop with the account's
/// own uid/gid (privilege separation, see `MaildropWorker`).
///
/// On the wire each message is a frame: a 4-byte big-endian length, an opcode byte, then its fields (integers
/// big-endian, strings as a 4-byte length and UTF-8). A message file travels as a descriptor (SCM_RIGHTS) attached
/// to `.contentFollows`, so message bytes never pass through the socket.
enum WorkerMessage: Equatable, Sendable {
    // pop3d → worker
    /// `maximumMessages`: the worker lists at most this many, the oldest (`limits.maildrop_messages`).
    case open(user: String, path: String, maximumMessages: Int)
    case content(index: Int)
    case commit(indices: [Int])
    case release
    /// One message into the Maildir at `path` (LMTP): `prefix` then `size` octets of the spool file attached.
    case deliver(user: String, path: String, quota: MaildirQuota, maximumSize: Int?, prefix: [UInt8], size: Int)
    // worker → pop3d
    case opened([MaildropMessage])
    case contentFollows
    case done
    case failed(MaildropError)
    case delivered(String)
    case deliveryFailed(DeliveryFailure)

    /// Whether a descriptor travels with this message: the message file, or the spool of a delivery.
    var carriesDescriptor: Bool {
        switch self {
        case .contentFollows, .deliver: true
        default: false
        }
    }

    /// Upper bound of one frame. The largest is `.opened` for a big maildrop: about 40 bytes per message, so this
    /// allows some 3 million messages.
    static let maximumFrameLength = 128 << 20

    private enum Opcode: UInt8 {
        case open = 1, content, commit, release, deliver
        case opened = 0x81, contentFollows, done, failed, delivered, deliveryFailed
    }

    func encode() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(0))
        switch self {
        case .open(let user, let path, let maximumMessages):
            buffer.writeInteger(Opcode.open.rawValue)
            Self.writeString(user, to: &buffer)
            Self.writeString(path, to: &buffer)
            buffer.writeInteger(UInt32(clamping: maximumMessages))
        case .content(let index):
            buffer.writeInteger(Opcode.content.rawValue)
            buffer.writeInteger(UInt32(truncatingIfNeeded: index))
        case .commit(let indices):
            buffer.writeInteger(Opcode.commit.rawValue)
            buffer.writeInteger(UInt32(indices.count))
            for index in indices { buffer.writeInteger(UInt32(truncatingIfNeeded: index)) }
        case .release:
            buffer.writeInteger(Opcode.release.rawValue)
        case .deliver(let user, let path, let quota, let maximumSize, let prefix, let size):
            buffer.writeInteger(Opcode.deliver.rawValue)
            Self.writeString(user, to: &buffer)
            Self.writeString(path, to: &buffer)
            // -1 for "no limit".
            for limit in [quota.storageBytes, quota.messages, maximumSize] { buffer.writeInteger(Int64(limit ?? -1)) }
            buffer.writeInteger(UInt32(prefix.count))
            buffer.writeBytes(prefix)
            buffer.writeInteger(UInt64(size))
        case .delivered(let name):
            buffer.writeInteger(Opcode.delivered.rawValue)
            Self.writeString(name, to: &buffer)
        case .deliveryFailed(let failure):
            buffer.writeInteger(Opcode.deliveryFailed.rawValue)
            switch failure {
            case .tooLarge(let text): buffer.writeInteger(UInt8(1)); Self.writeString(text, to: &buffer)
            case .quotaExceeded(let text): buffer.writeInteger(UInt8(2)); Self.writeString(text, to: &buffer)
            case .temporary(let text): buffer.writeInteger(UInt8(3)); Self.writeString(text, to: &buffer)
            }
        case .opened(let messages):
            buffer.writeInteger(Opcode.opened.rawValue)
            buffer.writeInteger(UInt32(messages.count))
            for message in messages {
                buffer.writeInteger(UInt64(message.size))
                Self.writeString(message.uniqueID, to: &buffer)
            }
        case .contentFollows:
            buffer.writeInteger(Opcode.contentFollows.rawValue)
        case .done:
            buffer.writeInteger(Opcode.done.rawValue)
        case .failed(let error):
            buffer.writeInteger(Opcode.failed.rawValue)
            switch error {
            case .inUse: buffer.writeInteger(UInt8(1))
            case .messageGone: buffer.writeInteger(UInt8(2))
            case .temporary(let text):
                buffer.writeInteger(UInt8(3))
                Self.writeString(text, to: &buffer)
            case .permanent(let text):
                buffer.writeInteger(UInt8(4))
                Self.writeString(text, to: &buffer)
            }
        }
        // A frame over the limit is refused by `WorkerChannel.send` before it goes out.
        buffer.setInteger(UInt32(truncatingIfNeeded: buffer.readableBytes - 4), at: 0)
        return buffer
    }

    /// Decodes one frame's payload (without the length prefix). Anything malformed or left over is an error.
    static func decode(_ payload: inout ByteBuffer) throws(WorkerChannelError) -> WorkerMessage {
        guard let code = payload.readInteger(as: UInt8.self), let opcode = Opcode(rawValue: code) else {
            throw .malformed("unknown opcode")
        }
        let message: WorkerMessage
        switch opcode {
        case .open:
            message = .open(
                user: try Self.readString(&payload),
                path: try Self.readString(&payload),
                maximumMessages: Int(try Self.readInteger(&payload, as: UInt32.self))
            )
        case .content:
            message = .content(index: Int(try Self.readInteger(&payload, as: UInt32.self)))
        case .commit:
            let count = Int(try Self.readInteger(&payload, as: UInt32.self))
            guard count <= payload.readableBytes / 4 else { throw .malformed("index count exceeds frame") }
            var indices: [Int] = []
            indices.reserveCapacity(count)
            for _ in 0..<count { indices.append(Int(try Self.readInteger(&payload, as: UInt32.self))) }
            message = .commit(indices: indices)
        case .release:
            message = .release
        case .deliver:
            let user = try Self.readString(&payload)
            let path = try Self.readString(&payload)
            var limits: [Int?] = []
            for _ in 0..<3 {
                let value = try Self.readInteger(&payload, as: Int64.self)
                guard value >= -1 else { throw .malformed("negative limit") }
                limits.append(value == -1 ? nil : Int(value))
            }
            let prefixLength = Int(try Self.readInteger(&payload, as: UInt32.self))
            guard let prefix = payload.readBytes(length: prefixLength) else { throw .malformed("truncated prefix") }
            let size = try Self.readInteger(&payload, as: UInt64.self)
            guard size <= UInt64(Int.max) else { throw .malformed("size out of range") }
            message = .deliver(
                user: user, path: path, quota: MaildirQuota(storageBytes: limits[0], messages: limits[1]),
                maximumSize: limits[2], prefix: prefix, size: Int(size)
            )
        case .delivered:
            message = .delivered(try Self.readString(&payload))
        case .deliveryFailed:
            let kind = try Self.readInteger(&payload, as: UInt8.self)
            let text = try Self.readString(&payload)
            switch kind {
            case 1: message = .deliveryFailed(.tooLarge(text))
            case 2: message = .deliveryFailed(.quotaExceeded(text))
            case 3: message = .deliveryFailed(.temporary(text))
            default: throw .malformed("unknown delivery failure")
            }
        case .opened:
            let count = Int(try Self.readInteger(&payload, as: UInt32.self))
            guard count <= payload.readableBytes / 12 else { throw .malformed("message count exceeds frame") }
            var messages: [MaildropMessage] = []
            messages.reserveCapacity(count)
            for _ in 0..<count {
                let size = try Self.readInteger(&payload, as: UInt64.self)
                guard size <= UInt64(Int.max) else { throw .malformed("message size out of range") }
                messages.append(MaildropMessage(uniqueID: try Self.readString(&payload), size: Int(size)))
            }
            message = .opened(messages)
        case .contentFollows:
            message = .contentFollows
        case .done:
            message = .done
        case .failed:
            switch try Self.readInteger(&payload, as: UInt8.self) {
            case 1: message = .failed(.inUse)
            case 2: message = .failed(.messageGone)
            case 3: message = .failed(.temporary(try Self.readString(&payload)))
            case 4: message = .failed(.permanent(try Self.readString(&payload)))
            default: throw .malformed("unknown error kind")
            }
        }
        guard payload.readableBytes == 0 else { throw .malformed("trailing bytes") }
        return message
    }

    private static func writeString(_ text: String, to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(text.utf8.count))
        buffer.writeString(text)
    }

    private static func readInteger<T: FixedWidthInteger>(_ buffer: inout ByteBuffer, as: T.Type) throws(WorkerChannelError) -> T {
        guard let value = buffer.readInteger(as: T.self) else { throw .malformed("truncated") }
        return value
    }

    private static func readString(_ buffer: inout ByteBuffer) throws(WorkerChannelError) -> String {
        let length = Int(try Self.readInteger(&buffer, as: UInt32.self))
        guard let bytes = buffer.readBytes(length: length) else { throw .malformed("truncated string") }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw .malformed("invalid UTF-8") }
        return text
    }
}

enum WorkerChannelError: Error, Equatable, CustomStringConvertible {
    /// The peer closed the socket (or exited).
    case closed
    /// No reply within the socket's receive timeout.
    case timedOut
    case malformed(String)
    case system(String, Int32)

    var description: String {
        switch self {
        case .closed: return "worker connection closed"
        case .timedOut: return "worker did not answer in time"
        case .malformed(let what): return "malformed worker message: \(what)"
        case .system(let call, let code): return "\(call) failed: \(String(cString: strerror(code)))"
        }
    }
}

/// A framed, blocking, request/response connection over a Unix stream socket, with descriptor passing. Every call
/// blocks: run it on a thread pool. Calls are serialised by the owner (one request in flight).
final class WorkerChannel: Sendable {
    private struct State {
        var socket: Int32
        var buffer: [UInt8] = []
        var descriptors: [Int32] = []
        /// Where each read lands, allocated once per connection (a read happens for every message of a session).
        var scratch = [UInt8](repeating: 0, count: 64 * 1024)
    }

    private let state: Mutex<State>

    init(socket: Int32) {
        self.state = Mutex(State(socket: socket))
    }

    /// Bounds how long `receive` waits for the peer (0: forever).
    func setReceiveTimeout(seconds: Int) {
        self.state.withLock { state in
            var value = timeval(tv_sec: seconds, tv_usec: 0)
            _ = setsockopt(state.socket, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    func send(_ message: WorkerMessage, attaching descriptor: Int32 = -1) throws(WorkerChannelError) {
        let frame = message.encode()
        guard frame.readableBytes - 4 <= WorkerMessage.maximumFrameLength else {
            throw .malformed("frame of \(frame.readableBytes - 4) bytes over the limit")
        }
        try self.state.withLock { state throws(WorkerChannelError) in
            guard state.socket >= 0 else { throw .closed }
            var offset = 0
            let result: WorkerChannelError? = frame.withUnsafeReadableBytes { bytes in
                while offset < bytes.count {
                    let sent = pop3_send_with_fd(
                        state.socket,
                        bytes.baseAddress! + offset,
                        bytes.count - offset,
                        offset == 0 ? descriptor : -1
                    )
                    if sent < 0 { return errno == EPIPE || errno == ECONNRESET ? .closed : .system("sendmsg", errno) }
                    offset += sent
                }
                return nil
            }
            if let result { throw result }
        }
    }

    /// The next message, and the descriptor that came with it (for `.contentFollows`; the caller owns it).
    func receive() throws(WorkerChannelError) -> (WorkerMessage, Int32?) {
        try self.state.withLock { state throws(WorkerChannelError) -> (WorkerMessage, Int32?) in
            guard state.socket >= 0 else { throw .closed }
            try Self.fill(&state, count: 4)
            let length = state.buffer[0..<4].reduce(0) { $0 << 8 | Int($1) }
            guard length >= 1, length <= WorkerMessage.maximumFrameLength else { throw .malformed("frame length \(length)") }
            try Self.fill(&state, count: 4 + length)
            var payload = ByteBuffer(bytes: state.buffer[4..<(4 + length)])
            state.buffer.removeFirst(4 + length)
            let message = try WorkerMessage.decode(&payload)
            guard message.carriesDescriptor else {
                guard state.descriptors.isEmpty else {
                    for stray in state.descriptors { _ = Glibc.close(stray) }
                    state.descriptors.removeAll()
                    throw .malformed("a descriptor came with a message that takes none")
                }
                return (message, nil)
            }
            guard state.descriptors.count == 1 else { throw .malformed("\(state.descriptors.count) descriptors with one message") }
            let descriptor = state.descriptors.removeFirst()
            for stray in state.descriptors { _ = Glibc.close(stray) }
            state.descriptors.removeAll()
            return (message, descriptor)
        }
    }

    private static func fill(_ state: inout State, count: Int) throws(WorkerChannelError) {
        let socket = state.socket
        while state.buffer.count < count {
            var descriptor: Int32 = -1
            let received = state.scratch.withUnsafeMutableBytes { pop3_receive_with_fd(socket, $0.baseAddress, $0.count, &descriptor) }
            if descriptor >= 0 { state.descriptors.append(descriptor) }
            if received == 0 { throw .closed }
            if received < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { throw .timedOut }
                if errno == ECONNRESET { throw .closed }
                throw .system("recvmsg", errno)
            }
            state.buffer.append(contentsOf: state.scratch[0..<received])
        }
    }

    /// Closes the socket (the peer sees end of stream) and any descriptor not handed out. Idempotent.
    func close() {
        self.state.withLock { state in
            if state.socket >= 0 { _ = Glibc.close(state.socket) }
            state.socket = -1
            for descriptor in state.descriptors { _ = Glibc.close(descriptor) }
            state.descriptors.removeAll()
        }
    }

    deinit {
        self.close()
    }
}

/// Privilege separation for mail files: a maildrop opened in a separate process that runs with the account's
/// uid/gid (Dovecot does the same with a mail process per user).
///
/// pop3d (an unprivileged user after binding) asks its privileged helper for a worker; the helper checks the
/// account against the passwd-file, starts `pop3d mail-worker` as the account's uid/gid and hands pop3d one end of
/// a socket pair. pop3d then drives the worker through `WorkerMaildrop`; the worker serves exactly one maildrop
/// session (`serve`) and exits when it is committed or released, or when pop3d goes away.
public enum MaildropWorker {
    /// How long pop3d waits for a worker's reply before the session gets `-ERR [SYS/TEMP]`.
    public static let replyTimeoutSeconds = 120

    /// The worker's side: serves one maildrop session on `socket` until commit, release, or end of stream (which
    /// releases the lock). Returns whether the session ended cleanly.
    public static func serve(socket: Int32, provider: MaildirProvider, logger: Logger) async -> Bool {
        let channel = WorkerChannel(socket: socket)
        defer { channel.close() }
        let pool = provider.threadPool
        var maildrop: MaildirMaildrop?
        func reply(_ message: WorkerMessage, attaching descriptor: Int32 = -1) async throws {
            try await pool.runIfActive { try channel.send(message, attaching: descriptor) }
        }
        do {
            while true {
                let (request, attached) = try await pool.runIfActive { try channel.receive() }
                if case .deliver(let user, let path, let quota, let maximumSize, let prefix, let size) = request, maildrop == nil {
                    guard let spool = attached else { throw WorkerChannelError.malformed("deliver without its spool file") }
                    defer { _ = Glibc.close(spool) }
                    let result: WorkerMessage = await Self.deliver(
                        .spool(prefix: prefix, descriptor: spool, size: size), path: path, user: user, quota: quota,
                        maximumSize: maximumSize, pool: pool
                    )
                    try await reply(result)
                    return true
                }
                switch (request, maildrop) {
                case (.open(let user, let path, let maximumMessages), nil):
                    do {
                        let opened = try await provider.openMaildirMaildrop(user: user, path: path)
                        maildrop = opened
                        // The oldest first, as pop3d's session shows them; commit indices stay the same.
                        try await reply(.opened(Array(opened.messages.prefix(maximumMessages))))
                    } catch {
                        // Opened but the listing could not be sent (too large, pop3d gone): unlock before answering.
                        await maildrop?.release()
                        maildrop = nil
                        try await reply(.failed(MaildirProvider.clientError(error, logger: logger, operation: "open maildrop")))
                        return true
                    }
                case (.content(let index), let opened?):
                    do {
                        let fd = try await pool.runIfActive { try opened.openMessageFile(at: index).fd }
                        defer { _ = Glibc.close(fd) }
                        try await reply(.contentFollows, attaching: fd)
                    } catch let error as WorkerChannelError {
                        throw error
                    } catch {
                        try await reply(.failed(MaildirProvider.clientError(error, logger: logger, operation: "open message")))
                    }
                case (.commit(let indices), let opened?):
                    maildrop = nil
                    do {
                        try await opened.commit(deleting: Set(indices))
                        try await reply(.done)
                    } catch {
                        try await reply(.failed(MaildirProvider.clientError(error, logger: logger, operation: "commit")))
                    }
                    return true
                case (.release, let opened):
                    maildrop = nil
                    await opened?.release()
                    try await reply(.done)
                    return true
                default:
                    logger.error("mail worker: unexpected request", metadata: ["request": "\(request)"])
                    await maildrop?.release()
                    return false
                }
            }
        } catch WorkerChannelError.closed {
            // pop3d ended the session without QUIT (or exited): release, delete nothing.
            await maildrop?.release()
            return true
        } catch {
            logger.error("mail worker: \(error)")
            await maildrop?.release()
            return false
        }
    }
}

extension MaildropWorker {
    static func deliver(
        _ source: DeliverySource, path: String, user: String, quota: MaildirQuota, maximumSize: Int?, pool: NIOThreadPool
    ) async -> WorkerMessage {
        do {
            let name = try await pool.runIfActive { () throws -> String in
                try MaildirDelivery.deliver(source, toMaildir: path, user: user, quota: quota, maximumSize: maximumSize)
            }
            return .delivered(name)
        } catch let failure as DeliveryFailure {
            return .deliveryFailed(failure)
        } catch {
            return .deliveryFailed(.temporary("delivery failed, nothing was stored: \(error)"))
        }
    }

    /// pop3d's side of an LMTP delivery through a mail worker (connected to `socket`, taken over and closed): the
    /// spool descriptor is passed to the worker, which writes the copy as the account.
    public static func deliver(
        socket: Int32,
        user: String,
        path: String,
        quota: MaildirQuota,
        maximumSize: Int?,
        prefix: [UInt8],
        spool: Int32,
        size: Int,
        rpcPool: NIOThreadPool,
        replyTimeoutSeconds: Int = MaildropWorker.replyTimeoutSeconds
    ) async throws(DeliveryFailure) -> String {
        let channel = WorkerChannel(socket: socket)
        channel.setReceiveTimeout(seconds: replyTimeoutSeconds)
        let reply: WorkerMessage
        do {
            reply = try await rpcPool.runIfActive {
                defer { channel.close() }
                try channel.send(.deliver(user: user, path: path, quota: quota, maximumSize: maximumSize, prefix: prefix, size: size), attaching: spool)
                return try channel.receive().0
            }
        } catch {
            throw .temporary("mail worker: \(error)")
        }
        switch reply {
        case .delivered(let name): return name
        case .deliveryFailed(let failure): throw failure
        default: throw .temporary("mail worker: unexpected reply to deliver")
        }
    }
}

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
