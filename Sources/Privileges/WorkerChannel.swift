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
