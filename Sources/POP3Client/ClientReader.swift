import NIOCore

/// Buffers what the server sends and hands it to the async client on request, with a deadline per wait and
/// read backpressure (no more reads from the socket while a megabyte is waiting to be consumed).
final class ClientReader: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    static let highWatermark = 1 << 20

    private(set) var buffer = ByteBuffer()
    private(set) var failure: (any Error)?
    private var eof = false
    private var waiter: (promise: EventLoopPromise<Void>, timeout: Scheduled<Void>)?
    private var readPending = false
    private var context: ChannelHandlerContext?
    private var eventLoop: (any EventLoop)?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.eventLoop = context.eventLoop
        self.readIfNeeded()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.eof = true
    }

    func channelActive(context: ChannelHandlerContext) {
        self.readIfNeeded()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = Self.unwrapInboundIn(data)
        self.buffer.writeBuffer(&incoming)
        // Wake on data, not only on read-complete: a TLS handler may swallow read-complete events.
        self.readPending = false
        self.wake()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.readPending = false
        self.wake()
        self.readIfNeeded()
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.failure == nil { self.failure = error }
        self.wake()
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.eof = true
        self.wake()
    }

    private func wake() {
        if let waiter = self.waiter {
            self.waiter = nil
            waiter.timeout.cancel()
            waiter.promise.succeed()
        }
    }

    private func readIfNeeded() {
        guard let context, !self.readPending, !self.eof, context.channel.isActive,
            self.buffer.readableBytes < Self.highWatermark
        else { return }
        self.readPending = true
        context.read()
    }

    /// Runs `body` on the buffered bytes; when it returns nil, waits (up to `timeout`) for more bytes and retries.
    /// Must be called on the event loop.
    func process<T>(timeout: TimeAmount, _ body: @escaping (inout ByteBuffer, _ eof: Bool) throws -> T?) -> EventLoopFuture<T> {
        let loop = self.eventLoop!
        do {
            if let value = try body(&self.buffer, self.eof && self.failure == nil) {
                self.buffer.discardReadBytes()
                self.readIfNeeded()
                return loop.makeSucceededFuture(value)
            }
        } catch {
            return loop.makeFailedFuture(error)
        }
        if let failure = self.failure { return loop.makeFailedFuture(failure) }
        if self.eof { return loop.makeFailedFuture(POP3ClientError.connectionClosed) }
        self.readIfNeeded()
        let promise = loop.makePromise(of: Void.self)
        let timeoutTask = loop.scheduleTask(in: timeout) { [weak self] in
            guard let self, let waiter = self.waiter else { return }
            self.waiter = nil
            waiter.promise.fail(POP3ClientError.timeout)
            self.context?.close(promise: nil)
        }
        self.waiter = (promise, timeoutTask)
        return promise.futureResult.flatMap { self.process(timeout: timeout, body) }
    }
}
