import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// `GET /metrics` in the Prometheus text format (`metrics.listen`), on a socket bound before privileges are dropped.
/// HTTP is swift-nio's HTTP/1.1 codec; the exposition is swift-prometheus's. Anything but `GET /metrics` gets 404;
/// a connection idle for 30 s is closed.
public final class MetricsEndpoint: Service, Sendable {
    let registry: PrometheusCollectorRegistry
    let descriptor: CInt
    let logger: Logger
    let group: any EventLoopGroup
    private let onListening: @Sendable (SocketAddress) -> Void

    public init(
        registry: PrometheusCollectorRegistry,
        descriptor: CInt,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        onListening: @escaping @Sendable (SocketAddress) -> Void = { _ in }
    ) {
        self.registry = registry
        self.descriptor = descriptor
        self.group = group
        self.logger = logger
        self.onListening = onListening
    }

    public func run() async throws {
        let registry = self.registry
        try await HTTPListener.serve(descriptor: self.descriptor, kind: "metrics", group: self.group, logger: self.logger, onListening: self.onListening) { sync in
            try sync.addHandler(MetricsRequestHandler(registry: registry))
        }
    }
}

/// An HTTP/1.1 listener on a socket bound before the privilege drop, until graceful shutdown: each connection gets
/// `before` (e.g. TLS), a 30 s idle limit, swift-nio's HTTP server codec, then the handler `after` adds.
enum HTTPListener {
    static func serve(
        descriptor: CInt,
        kind: String,
        group: any EventLoopGroup,
        logger: Logger,
        onListening: @escaping @Sendable (SocketAddress) -> Void,
        before: @escaping @Sendable (ChannelPipeline.SynchronousOperations) throws -> Void = { _ in },
        after: @escaping @Sendable (ChannelPipeline.SynchronousOperations) throws -> Void
    ) async throws {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try before(sync)
                    try sync.addHandler(IdleStateHandler(readTimeout: .seconds(30)))
                    try sync.configureHTTPServerPipeline(withErrorHandling: true)
                    try after(sync)
                }
            }
            .withBoundSocket(descriptor)
            .get()
        if let address = channel.localAddress {
            logger.info("listening", metadata: ["kind": "\(kind)", "address": "\(address)"])
            onListening(address)
        }
        await withGracefulShutdownHandler {
            try? await channel.closeFuture.get()
        } onGracefulShutdown: {
            channel.close(promise: nil)
        }
    }
}

/// Answers each request on one connection: the registry's exposition for `GET /metrics`, 404 for the rest.
final class MetricsRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private var head: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            if head.method == .GET && path == "/metrics" {
                var bytes: [UInt8] = []
                self.registry.emit(into: &bytes)
                HTTPReply.send(context: context, head: head, status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: bytes)
            } else {
                HTTPReply.send(context: context, head: head, status: .notFound, contentType: "text/plain; charset=utf-8", body: Array("Not found: only GET /metrics is served.\n".utf8))
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// One HTTP/1.1 response on a NIOHTTP1 server pipeline: head with Content-Type and Content-Length, the body (not
/// for HEAD), then a close unless the request asked to keep the connection.
enum HTTPReply {
    static func send(
        context: ChannelHandlerContext,
        head: HTTPRequestHead,
        status: HTTPResponseStatus,
        contentType: String,
        body: [UInt8],
        extraHeaders: [(String, String)] = []
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.count)")
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        }
        let done = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: done)
        if !keepAlive {
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            done.futureResult.whenComplete { _ in bound.value.close(promise: nil) }
        }
    }
}
