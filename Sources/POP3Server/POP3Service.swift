import Accounts
import Logging
import MailStore
import MailStorePostgres
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import POP3Core
import POP3NIO
import SASL
import ServiceLifecycle

/// The kind of a listener.
public enum ListenerKind: String, Sendable {
    /// Implicit TLS (RFC 8314), port 995.
    case pop3s
    /// Plaintext with STLS (RFC 2595), port 110.
    case pop3
    /// LMTP delivery (RFC 2033), from an MTA.
    case lmtp
    /// `GET /metrics` (Prometheus).
    case metrics
    /// HTTPS client auto-configuration (Thunderbird autoconfig, Outlook Autodiscover).
    case autoconfig
}

/// A listener once bound (with the real port when 0 was asked for).
public struct BoundListener: Sendable {
    public var kind: ListenerKind
    public var address: SocketAddress
    public var port: Int { self.address.port ?? 0 }
}

typealias ConnectionChannel = NIOAsyncChannel<POP3InboundFrame, POP3OutboundFrame>

/// The POP3 server: listeners, connection limits, sessions, graceful shutdown.
public final class POP3Service: Service, Sendable {
    /// What new connections read: the configuration as last (re)loaded.
    let live: LiveConfiguration
    public var configuration: ServerConfiguration { self.live.current }
    let tls: TLSProvider?
    let verifier: any CredentialVerifier
    /// OAUTHBEARER/XOAUTH2 bearer token validation, when `auth.oauth2` is configured.
    let oauth: OAuth2Validator?
    let maildrops: any MaildropProvider
    let locator: MaildirLocator
    let group: any EventLoopGroup
    let logger: Logger
    let limiter: ConnectionLimiter
    let penalty: AuthPenalty
    let loginDelay: LoginDelay
    /// EXPIRE's first-retrieval times: files in state_dir, or the database's rows with the PostgreSQL backend.
    let retrievalTimes: any RetrievalTimes
    let metrics: ServerMetrics
    private let onListening: @Sendable ([BoundListener]) -> Void
    private let prebound: [PreboundListener]?
    private let openChannels = NIOLockedValueBox<[ObjectIdentifier: (channel: any Channel, record: ConnectionRecord)]>([:])
    private let connectionCounter = ManagedAtomicCounter()
    fileprivate let expirePerUserCache = NIOLockedValueBox<(at: ContinuousClock.Instant, value: Bool)?>(nil)

    public init(
        configuration: ServerConfiguration,
        tls: TLSProvider?,
        verifier: any CredentialVerifier,
        oauth: OAuth2Validator? = nil,
        maildrops: any MaildropProvider,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        prebound: [PreboundListener]? = nil,
        sharedPenalty: (store: SharedPenalty, key: [UInt8])? = nil,
        retrievalTimes: (any RetrievalTimes)? = nil,
        sharedLoginTimes: SharedLoginTimes? = nil,
        metrics: ServerMetrics = .disabled,
        live: LiveConfiguration? = nil,
        onListening: @escaping @Sendable ([BoundListener]) -> Void = { _ in }
    ) {
        self.metrics = metrics
        self.prebound = prebound
        self.live = live ?? LiveConfiguration(configuration)
        self.tls = tls
        self.verifier = verifier
        self.oauth = oauth
        self.maildrops = maildrops
        self.locator = MaildirLocator(template: configuration.maildirTemplate)
        self.group = group
        self.logger = logger
        self.limiter = ConnectionLimiter(
            maximumConnections: configuration.limits.connections,
            maximumPerAddress: configuration.limits.connectionsPerAddress
        )
        self.penalty = AuthPenalty(trustedNetworks: configuration.trustedNetworks, shared: sharedPenalty)
        self.retrievalTimes = retrievalTimes ?? RetrievalLog(stateFolder: configuration.stateFolder)
        self.loginDelay = LoginDelay(delay: .seconds(configuration.policy.loginDelaySeconds), shared: sharedLoginTimes)
        self.onListening = onListening
    }

    /// Binds every listener, serves until graceful shutdown (or cancellation), then lets sessions finish for up to
    /// the grace period before closing them.
    public func run() async throws {
        var listeners: [(ListenerKind, NIOAsyncChannel<ConnectionSetup, Never>)] = []
        if let prebound = self.prebound {
            for listener in prebound {
                listeners.append((listener.kind, try await self.bind(.socket(listener.descriptor, listener.address), kind: listener.kind)))
            }
        } else {
            for address in self.configuration.pop3sListeners {
                listeners.append((.pop3s, try await self.bind(.address(address), kind: .pop3s)))
            }
            for address in self.configuration.pop3Listeners {
                listeners.append((.pop3, try await self.bind(.address(address), kind: .pop3)))
            }
        }
        let bound = listeners.compactMap { kind, channel in channel.channel.localAddress.map { BoundListener(kind: kind, address: $0) } }
        for listener in bound {
            self.logger.info("listening", metadata: ["kind": "\(listener.kind.rawValue)", "address": "\(listener.address)"])
        }
        self.onListening(bound)

        await serveListeners(
            listeners,
            serverChannels: listeners.map { $0.1.channel },
            grace: self.configuration.limits.shutdownGracePeriod,
            group: self.group,
            onShutdown: {
                self.logger.info("shutting down: no new connections; sessions get \(self.configuration.limits.shutdownGracePeriod) to finish")
            },
            closeConnections: { self.closeAllConnections() },
            accept: { kind, listener in await self.acceptLoop(listener, kind: kind) }
        )
        self.logger.info("stopped")
    }

    /// Closes every open connection (end of the shutdown grace period). Sessions not in UPDATE delete nothing.
    func closeAllConnections() {
        let open = self.openChannels.withLockedValue { Array($0.values) }
        for (channel, record) in open {
            record.closingByServer()
            channel.close(promise: nil)
        }
    }

    /// An accepted connection with its pipeline in place but reading paused until a session task owns it:
    /// the async wrapper is made there, so a connection accepted during shutdown is never a wrapper nobody
    /// finishes (its timers close it).
    struct ConnectionSetup: Sendable {
        let channel: any Channel
        let admission: ConnectionLimiter.Decision
        let record: ConnectionRecord
        /// The client's address: the peer's, or the one a trusted proxy's PROXY v2 header names.
        let clientAddress: NIOLockedValueBox<SocketAddress?>
        /// The TLS channel binding, set when TLS handlers are added (at accept for POP3S, at STLS otherwise).
        let channelBinding: NIOLockedValueBox<ChannelBinding?>
    }

    enum BindTarget {
        case address(ListenAddress)
        case socket(CInt, ListenAddress)
        var address: ListenAddress {
            switch self {
            case .address(let a), .socket(_, let a): a
            }
        }
    }

    private func bind(_ target: BindTarget, kind: ListenerKind) async throws -> NIOAsyncChannel<ConnectionSetup, Never> {
        let address = target.address
        let tls = self.tls
        let live = self.live
        let limiter = self.limiter
        let openChannels = self.openChannels
        let logger = self.logger
        let metrics = self.metrics
        let counter = self.connectionCounter
        do {
            let bootstrap = ServerBootstrap(group: self.group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .childChannelOption(.autoRead, value: false)
                .childChannelOption(.allocator, value: IdleConnectionAllocator.make(maximumConnections: live.current.limits.connections))
            let initializer: @Sendable (any Channel) -> EventLoopFuture<ConnectionSetup> = { (channel: any Channel) -> EventLoopFuture<ConnectionSetup> in
                channel.eventLoop.makeCompletedFuture { () throws -> ConnectionSetup in
                    // Read per connection: a SIGHUP reload changes limits and proxies for new connections.
                    let configuration = live.current
                    let limits = configuration.limits
                    let proxyNetworks = configuration.proxyNetworks
                    let lineLimit = max(limits.commandLineLength, limits.saslLineLength)
                    let handshakeTimeout = TimeAmount.seconds(limits.handshakeTimeout.components.seconds)
                    let fromProxy = proxyNetworks.contains { $0.contains(channel.remoteAddress) }
                    let admission = limiter.admit(channel.remoteAddress, perAddress: !fromProxy)
                    let clientAddress = NIOLockedValueBox<SocketAddress?>(fromProxy ? nil : channel.remoteAddress)
                    let channelBinding = NIOLockedValueBox<ChannelBinding?>(nil)
                    let record = ConnectionRecord(id: counter.next(), listener: kind, clientAddress: clientAddress, metrics: metrics)
                    var factory: OutboundFrameHandler.TLSHandlerFactory? = nil
                    if kind == .pop3, let tls {
                        factory = { (_: any Channel) throws -> [any ChannelHandler] in
                            try tls.makeHandlers(handshakeTimeout: handshakeTimeout, channelBinding: channelBinding, observation: record.tls)
                        }
                    }
                    if case .admitted(let key) = admission {
                        let id = ObjectIdentifier(channel)
                        openChannels.withLockedValue { $0[id] = (channel, record) }
                        metrics.connectionOpened(kind)
                        channel.closeFuture.whenComplete { _ in
                            limiter.release(key: key)
                            openChannels.withLockedValue { $0[id] = nil }
                            metrics.connectionClosed(kind)
                        }
                    }
                    let sync = channel.pipeline.syncOperations
                    if fromProxy {
                        let peer = channel.remoteAddress
                        try sync.addHandler(
                            ProxyProtocolHandler { header in
                                clientAddress.withLockedValue { $0 = header.source ?? peer }
                                logger.debug("PROXY v2", metadata: ["proxy": "\(peer.map { "\($0)" } ?? "?")", "client": "\(header.source.map { "\($0)" } ?? "local")"])
                            }
                        )
                    }
                    if kind == .pop3s, let tls {
                        try sync.addHandlers(try tls.makeHandlers(handshakeTimeout: handshakeTimeout, channelBinding: channelBinding, observation: record.tls))
                    }
                    try sync.addHandler(
                        SessionTimeoutHandler(
                            preAuthenticationTimeout: .seconds(limits.preAuthenticationTimeout.components.seconds),
                            idleTimeout: .seconds(limits.idleTimeout.components.seconds),
                            onTimeout: { record.timedOut() }
                        )
                    )
                    try sync.addHandler(ByteToMessageHandler(LineFrameDecoder(maximumLineLength: lineLimit)))
                    try sync.addHandler(OutboundFrameHandler(maximumLineLength: lineLimit, makeTLSHandlers: factory))
                    return ConnectionSetup(channel: channel, admission: admission, record: record, clientAddress: clientAddress, channelBinding: channelBinding)
                }
            }
            switch target {
            case .address(let address):
                return try await bootstrap.bind(host: address.host, port: address.port, childChannelInitializer: initializer)
            case .socket(let descriptor, _):
                return try await bootstrap.bind(descriptor, childChannelInitializer: initializer)
            }
        } catch {
            throw ConfigurationError(key: "listen.\(kind.rawValue)", "cannot listen on \(address): \(error)")
        }
    }

    private func acceptLoop(_ listener: NIOAsyncChannel<ConnectionSetup, Never>, kind: ListenerKind) async {
        do {
            try await listener.executeThenClose { inbound in
                try await withThrowingDiscardingTaskGroup { group in
                    for try await setup in inbound {
                        group.addTask(executorPreference: EventLoopTaskExecutor(setup.channel.eventLoop)) {
                            await self.serve(setup, kind: kind)
                        }
                    }
                }
            }
        } catch {
            self.logger.error("listener failed", metadata: ["kind": "\(kind.rawValue)", "error": "\(error)"])
        }
    }

    /// One connection. Never throws into the server: whatever happens here ends this connection only.
    private func serve(_ setup: ConnectionSetup, kind: ListenerKind) async {
        var logger = self.logger
        logger[metadataKey: "conn"] = "\(setup.record.id)"
        logger[metadataKey: "peer"] = "\(setup.channel.remoteAddress.map { "\($0)" } ?? "?")"
        let connection: ConnectionChannel
        do {
            connection = try await AcceptedChannel(channel: setup.channel).wrap(as: ConnectionChannel.self)
        } catch {
            logger.debug("connection closed before its session started", metadata: ["error": "\(error)"])
            setup.channel.close(promise: nil)
            setup.record.finish()
            self.metrics.sessionEnded(kind, setup.record.endWithoutQuit(error: error), duration: ContinuousClock.now - setup.record.started)
            return
        }
        guard case .admitted = setup.admission else {
            logger.warning("connection refused: limit reached", metadata: ["limit": "\(setup.admission)"])
            self.metrics.sessionEnded(kind, .refused, duration: ContinuousClock.now - setup.record.started)
            setup.record.finish()
            try? await connection.executeThenClose { _, outbound in
                if kind == .pop3 {
                    var buffer = ByteBuffer()
                    StatusResponse.err("Too many connections, try again later.", code: .sysTemp).write(into: &buffer)
                    try await outbound.write(.bytes(buffer))
                }
            }
            return
        }
        await self.makeDriver(setup, kind: kind, logger: logger).run(connection)
        setup.record.finish()
    }

    /// The session of an admitted connection, as the configuration is now. Not async, on purpose: what it builds on
    /// the way (copies of the configuration) stays on the thread's stack. In `serve`, an async function, it would
    /// sit in the connection's task frame for as long as the connection lives (24 KB of an idle connection's memory,
    /// measured with heaptrack, before this was split out).
    @inline(never)
    private func makeDriver(_ setup: ConnectionSetup, kind: ListenerKind, logger: Logger) -> SessionDriver {
        let configuration = self.configuration
        var sessionConfiguration = ServerSession.Configuration()
        sessionConfiguration.stlsAvailable = kind == .pop3 && self.tls != nil
        sessionConfiguration.allowCleartextAuthentication = configuration.allowCleartextAuthentication
        sessionConfiguration.maximumCommandLineLength = configuration.limits.commandLineLength
        sessionConfiguration.maximumSASLLineLength = configuration.limits.saslLineLength
        sessionConfiguration.maximumBadCommandsBeforeLogin = configuration.limits.badCommandsBeforeLogin
        sessionConfiguration.maximumBadCommandsAfterLogin = configuration.limits.badCommandsAfterLogin
        sessionConfiguration.maximumMessages = configuration.limits.maildropMessages
        sessionConfiguration.loginDelaySeconds = configuration.policy.loginDelaySeconds
        sessionConfiguration.utf8 = configuration.policy.utf8
        sessionConfiguration.expireDays = configuration.policy.expireDays
        sessionConfiguration.expirePerUser = self.expirePerUser()
        sessionConfiguration.saslMechanisms = configuration.saslMechanisms.map(\.rawValue)
        return SessionDriver(
            session: ServerSession(configuration: sessionConfiguration, tlsActive: kind == .pop3s),
            verifier: self.verifier,
            oauth: self.oauth,
            maildrops: self.maildrops,
            locator: self.locator,
            penalty: self.penalty,
            failureDelay: configuration.authenticationFailureDelay,
            loginDelay: self.loginDelay,
            policy: configuration.policy,
            retrievalLog: self.retrievalTimes,
            clientAddress: setup.clientAddress,
            channelBinding: setup.channelBinding,
            record: setup.record,
            metrics: self.metrics,
            logger: logger
        )
    }

    /// After a reload: the limiter, the penalty's trusted networks and LOGIN-DELAY take the new values.
    func configurationChanged() {
        let configuration = self.configuration
        self.limiter.update(maximumConnections: configuration.limits.connections, maximumPerAddress: configuration.limits.connectionsPerAddress)
        self.penalty.trusted = configuration.trustedNetworks
        self.loginDelay.delay = .seconds(configuration.policy.loginDelaySeconds)
    }

    // MARK: control socket

    /// The open sessions, oldest first (`pop3d who`).
    func sessions() -> [ControlSessionInfo] {
        self.openChannels.withLockedValue { open in open.values.map(\.record.info) }.sorted { $0.id < $1.id }
    }

    /// Closes the sessions of `user` (or the one with id `session`), without applying their DELEs, and waits (up to
    /// 10 s) until each has released its maildrop, so that the user can log in again at once. Returns how many.
    func kick(user: String?, session: UInt64?) async -> Int {
        let chosen = self.openChannels.withLockedValue { open in
            open.values.filter { entry in
                if let session { return entry.record.id == session }
                return user != nil && entry.record.user == user
            }
        }
        for (channel, record) in chosen {
            record.kick()
            channel.close(promise: nil)
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while chosen.contains(where: { !$0.record.isFinished }) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        return chosen.count
    }
}

extension POP3Service {
    /// Whether accounts' EXPIRE may differ (a passwd-file entry sets `expire_days=`): CAPA then says `USER`.
    /// Looked up at most every few seconds, not per connection.
    func expirePerUser() -> Bool {
        guard let verifier = self.verifier as? PasswdFileVerifier else { return false }
        let now = ContinuousClock.now
        if let cached = self.expirePerUserCache.withLockedValue({ $0 }), now - cached.at < .seconds(5) { return cached.value }
        let value = verifier.records().contains { $0.extraFields.contains { $0.hasPrefix("expire_days=") } }
        self.expirePerUserCache.withLockedValue { $0 = (now, value) }
        return value
    }
}

/// A small lock-protected counter for connection ids.
final class ManagedAtomicCounter: Sendable {
    private let value = NIOLockedValueBox<UInt64>(0)
    func next() -> UInt64 { self.value.withLockedValue { $0 += 1; return $0 } }
}
