import Foundation
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import POP3Core
import ServiceLifecycle

/// One session as `pop3d who` shows it.
public struct ControlSessionInfo: Codable, Sendable, Equatable {
    public var id: UInt64
    public var user: String?
    public var client: String?
    public var listener: String
    /// Seconds since the epoch at accept.
    public var since: Int64
    /// authorization, transaction or update.
    public var state: String
    public var octetsSent: Int
}

/// One address under the authentication penalty, as `pop3d penalty list` shows it.
public struct ControlPenaltyInfo: Codable, Sendable, Equatable {
    public var address: String
    public var failures: Int
    public var secondsSinceLastFailure: Int64
}

/// A request on the control socket: one JSON object on one line.
public struct ControlRequest: Codable, Sendable {
    public enum Command: String, Codable, Sendable { case who, kick, penaltyList = "penalty-list", penaltyClear = "penalty-clear" }
    public var command: Command
    public var user: String?
    public var session: UInt64?
    public var address: String?

    public init(command: Command, user: String? = nil, session: UInt64? = nil, address: String? = nil) {
        self.command = command
        self.user = user
        self.session = session
        self.address = address
    }
}

/// The answer: one JSON object on one line, then the server closes.
public struct ControlResponse: Codable, Sendable {
    public var ok: Bool
    public var error: String?
    public var sessions: [ControlSessionInfo]?
    public var kicked: Int?
    public var penalties: [ControlPenaltyInfo]?
    public var cleared: Bool?

    public init(ok: Bool, error: String? = nil) {
        self.ok = ok
        self.error = error
    }
}

/// The control socket (`control.socket`, default `run/pop3d.sock` beside the configuration): a Unix socket of mode
/// 0600 owned by the user pop3d runs as, so that only that user and root can use it. Each connection carries one
/// request line (at most 4 KiB) and gets one answer line.
public final class ControlService: Service, Sendable {
    let descriptor: CInt
    let path: String
    let server: POP3Service
    let logger: Logger
    let group: any EventLoopGroup

    public static let maximumRequestLength = 4096

    init(descriptor: CInt, path: String, server: POP3Service, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) {
        self.descriptor = descriptor
        self.path = path
        self.server = server
        self.group = group
        self.logger = logger
    }

    public func run() async throws {
        typealias Connection = NIOAsyncChannel<ByteBuffer, ByteBuffer>
        let listener: NIOAsyncChannel<Connection, Never> = try await ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 16)
            .bind(self.descriptor) { (channel: any Channel) -> EventLoopFuture<Connection> in
                channel.eventLoop.makeCompletedFuture { () throws -> Connection in
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: .seconds(10)))
                    try channel.pipeline.syncOperations.addHandler(CloseWhenIdleHandler())
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(LineBasedFrameDecoder(), maximumBufferSize: Self.maximumRequestLength)
                    )
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
        self.logger.info("listening", metadata: ["kind": "control", "address": "unix:\(self.path)"])
        await withGracefulShutdownHandler {
            do {
                try await listener.executeThenClose { inbound in
                    try await withThrowingDiscardingTaskGroup { group in
                        for try await connection in inbound {
                            group.addTask { await self.serve(connection) }
                        }
                    }
                }
            } catch {
                self.logger.debug("control socket closed", metadata: ["error": "\(error)"])
            }
        } onGracefulShutdown: {
            listener.channel.close(promise: nil)
        }
        unlink(self.path)
    }

    private func serve(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async {
        try? await connection.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            guard let line = try await iterator.next() else { return }
            let response: ControlResponse
            do {
                response = await self.answer(try JSONDecoder().decode(ControlRequest.self, from: Data(line.readableBytesView)))
            } catch {
                response = ControlResponse(ok: false, error: "not a request: \(error)")
            }
            var data = try JSONEncoder().encode(response)
            data.append(UInt8(ascii: "\n"))
            try await outbound.write(ByteBuffer(bytes: data))
        }
    }

    func answer(_ request: ControlRequest) async -> ControlResponse {
        var response = ControlResponse(ok: true)
        switch request.command {
        case .who:
            response.sessions = self.server.sessions()
        case .kick:
            guard (request.user == nil) != (request.session == nil) else {
                return ControlResponse(ok: false, error: "kick needs a user or a session id")
            }
            let kicked = await self.server.kick(user: request.user, session: request.session)
            self.logger.notice("control: sessions kicked", metadata: [
                "kicked": "\(kicked)", "target": "\(request.user.map { "user \(logEscaped($0))" } ?? "session \(request.session!)")",
            ])
            response.kicked = kicked
        case .penaltyList:
            do {
                response.penalties = try await self.server.penalty.listing()
            } catch {
                return ControlResponse(ok: false, error: "cannot read the penalty table: \(error)")
            }
        case .penaltyClear:
            guard let address = request.address else { return ControlResponse(ok: false, error: "penalty clear needs an address") }
            do {
                response.cleared = try await self.server.penalty.clear(address)
                self.logger.notice("control: penalty cleared", metadata: ["address": "\(logEscaped(address))", "had-failures": "\(response.cleared!)"])
            } catch {
                return ControlResponse(ok: false, error: "cannot clear the penalty: \(error)")
            }
        }
        return response
    }
}

/// Closes a connection that sent nothing for the IdleStateHandler's time, after `goodbye` if there is one (LMTP's
/// 421; the control socket says nothing).
final class CloseWhenIdleHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    let goodbye: ByteBuffer?

    init(goodbye: ByteBuffer? = nil) { self.goodbye = goodbye }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is IdleStateHandler.IdleStateEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        if let goodbye = self.goodbye { context.writeAndFlush(NIOAny(goodbye), promise: nil) }
        context.close(promise: nil)
    }
}

/// The command-line side: one request to a running pop3d's control socket.
public enum ControlClient {
    public enum Failure: Error, CustomStringConvertible {
        case notRunning(String, String)
        case protocolError(String)

        public var description: String {
            switch self {
            case .notRunning(let path, let reason):
                "cannot reach pop3d's control socket \(path): \(reason) (is pop3d running with this configuration, and are you root or its user?)"
            case .protocolError(let text): "control socket: \(text)"
            }
        }
    }

    /// Sends `request` and returns the answer (blocking; a 30 s bound on the whole exchange).
    public static func send(_ request: ControlRequest, to path: String) throws -> ControlResponse {
        let fd = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure.notRunning(path, String(cString: strerror(errno))) }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let address: SocketAddress
        do {
            address = try SocketAddress(unixDomainSocketPath: path)
        } catch {
            throw Failure.notRunning(path, "\(error)")
        }
        guard address.withSockAddr({ connect(fd, $0, socklen_t($1)) }) == 0 else {
            throw Failure.notRunning(path, String(cString: strerror(errno)))
        }
        var line = try JSONEncoder().encode(request)
        line.append(UInt8(ascii: "\n"))
        let written = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == line.count else { throw Failure.protocolError("request not sent: \(String(cString: strerror(errno)))") }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !answer.contains(UInt8(ascii: "\n")) {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 { throw Failure.protocolError("no answer: \(String(cString: strerror(errno)))") }
            if count == 0 { break }
            answer += buffer[0..<count]
            if answer.count > 64 << 20 { throw Failure.protocolError("answer over 64 MiB") }
        }
        do {
            return try JSONDecoder().decode(ControlResponse.self, from: Data(answer))
        } catch {
            throw Failure.protocolError("unreadable answer: \(error)")
        }
    }
}
