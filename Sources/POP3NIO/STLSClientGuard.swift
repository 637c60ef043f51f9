import NIOCore
import NIOTLS

/// Raised when a server sends bytes after its reply to STLS before TLS is up (response injection,
/// docs/security-cases.md §2), or answers STLS with something that is not a status line.
public enum STLSClientError: Error, Sendable, Equatable {
    case dataAfterSTLSReply
    case statusLineTooLong
}

/// Client side of the STLS switch (RFC 2595 §4).
///
/// Added in front of the pipeline before the client sends `STLS`. It passes the server's reply line on; if the
/// reply is `+OK`, it inserts the TLS handler in front of itself in the same event-loop tick and then steps
/// aside. Any byte that came with or after the reply in plaintext makes it fail the connection: a response
/// injected there would otherwise be read as if it came through TLS (NO STARTTLS, CVE-2011-0411 class).
public final class STLSClientGuard: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer

    private let makeTLSHandler: @Sendable () throws -> any ChannelHandler
    private let maximumLineLength: Int
    private var pending = ByteBuffer()
    private var done = false

    public init(maximumLineLength: Int = 512, makeTLSHandler: @escaping @Sendable () throws -> any ChannelHandler) {
        self.makeTLSHandler = makeTLSHandler
        self.maximumLineLength = maximumLineLength
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.done else {
            context.fireChannelRead(data)
            return
        }
        var incoming = Self.unwrapInboundIn(data)
        self.pending.writeBuffer(&incoming)
        guard let lf = self.pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if self.pending.readableBytes > self.maximumLineLength { self.fail(context: context, .statusLineTooLong) }
            return
        }
        let length = lf - self.pending.readerIndex + 1
        let line = self.pending.readSlice(length: length)!
        guard self.pending.readableBytes == 0 else {
            self.fail(context: context, .dataAfterSTLSReply)
            return
        }
        self.done = true
        let isOK = line.readableBytesView.starts(with: "+OK".utf8)
        if isOK {
            do {
                try context.pipeline.syncOperations.addHandler(try self.makeTLSHandler(), position: .first)
            } catch {
                context.fireErrorCaught(error)
                context.close(promise: nil)
                return
            }
        }
        context.fireChannelRead(Self.wrapInboundOut(line))
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    private func fail(context: ChannelHandlerContext, _ error: STLSClientError) {
        self.done = true
        self.pending.clear()
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }
}

/// Records the ALPN protocol the server selected (the cipher suite comes from `ServerHelloSniffer`).
public final class TLSHandshakeObserver: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = NIOAny
    public typealias OutboundIn = NIOAny

    public struct Result: Sendable, Equatable {
        public var negotiatedProtocol: String?
        public var completed = false
    }

    public private(set) var result = Result()
    private let onComplete: @Sendable (Result) -> Void

    public init(onComplete: @escaping @Sendable (Result) -> Void = { _ in }) {
        self.onComplete = onComplete
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let negotiated) = event as? TLSUserEvent {
            self.result.negotiatedProtocol = negotiated
            self.result.completed = true
            self.onComplete(self.result)
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Sits in front of the client's TLS handler and reads the cipher suite out of the ServerHello.
public final class ServerHelloSniffer: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer

    private var seen = ByteBuffer()
    private let onCipherSuite: @Sendable (UInt16) -> Void

    public init(onCipherSuite: @escaping @Sendable (UInt16) -> Void) {
        self.onCipherSuite = onCipherSuite
    }

    /// The cipher suite of a TLS record holding a ServerHello at the start of `buffer` (raw server bytes), if
    /// enough of it is there.
    public static func cipherSuite(fromServerHello buffer: ByteBuffer) -> UInt16? {
        var b = buffer
        guard let header = b.readBytes(length: 5), header[0] == 22,
            let type = b.readInteger(as: UInt8.self), type == 2,
            b.readSlice(length: 3 + 2 + 32) != nil,
            let sessionIDLength = b.readInteger(as: UInt8.self), b.readSlice(length: Int(sessionIDLength)) != nil
        else { return nil }
        return b.readInteger(as: UInt16.self)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = Self.unwrapInboundIn(data)
        if self.seen.readableBytes < 256 {
            var copy = bytes
            self.seen.writeBuffer(&copy)
            if let suite = Self.cipherSuite(fromServerHello: self.seen) {
                self.onCipherSuite(suite)
                self.seen = ByteBuffer()
                context.fireChannelRead(Self.wrapInboundOut(bytes))
                context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                return
            }
        }
        context.fireChannelRead(Self.wrapInboundOut(bytes))
    }
}
