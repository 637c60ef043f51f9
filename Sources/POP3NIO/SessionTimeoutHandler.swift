import NIOCore

/// Tells the timeout handler that the client logged in.
public struct SessionAuthenticatedEvent: Sendable {
    public init() {}
}

/// The session timers of RFC 1939 §3, enforced on the event loop (so tests drive them with an embedded clock).
///
/// - Before login: an absolute deadline from the moment the connection is up.
/// - After login: an inactivity timer, reset by every read and write (a client downloading a large message is
///   not idle). Expiry closes the connection without a reply; the session then deletes nothing.
public final class SessionTimeoutHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = NIOAny
    public typealias OutboundIn = NIOAny

    private let preAuthenticationTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    private var authenticated = false
    private var lastActivity: NIODeadline = .now()
    private var scheduled: Scheduled<Void>?

    private let onTimeout: @Sendable () -> Void

    /// `onTimeout` is called just before the handler closes the connection for a timeout.
    public init(preAuthenticationTimeout: TimeAmount, idleTimeout: TimeAmount, onTimeout: @escaping @Sendable () -> Void = {}) {
        self.preAuthenticationTimeout = preAuthenticationTimeout
        self.idleTimeout = idleTimeout
        self.onTimeout = onTimeout
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.lastActivity = .now()
        if context.channel.isActive { self.arm(context: context, after: self.preAuthenticationTimeout) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        if self.scheduled == nil { self.arm(context: context, after: self.preAuthenticationTimeout) }
        context.fireChannelActive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.scheduled?.cancel()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.scheduled?.cancel()
        context.fireChannelInactive()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.lastActivity = context.eventLoop.now
        context.fireChannelRead(data)
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        self.lastActivity = context.eventLoop.now
        context.write(data, promise: promise)
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is SessionAuthenticatedEvent, !self.authenticated {
            self.authenticated = true
            self.scheduled?.cancel()
            self.lastActivity = context.eventLoop.now
            self.arm(context: context, after: self.idleTimeout)
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func arm(context: ChannelHandlerContext, after delay: TimeAmount) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        self.scheduled = context.eventLoop.scheduleTask(in: delay) {
            let (handler, context) = loopBound.value
            handler.expired(context: context)
        }
    }

    private func expired(context: ChannelHandlerContext) {
        guard self.authenticated else {
            self.onTimeout()
            context.close(promise: nil)
            return
        }
        let idleFor = context.eventLoop.now - self.lastActivity
        if idleFor >= self.idleTimeout {
            self.onTimeout()
            context.close(promise: nil)
        } else {
            self.arm(context: context, after: self.idleTimeout - idleFor)
        }
    }
}
