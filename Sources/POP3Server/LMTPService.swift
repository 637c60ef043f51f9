import Accounts
import Foundation
import LMTPCore
import Logging
import MailStore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import POP3Core
import ServiceLifecycle
import SystemIO

#if canImport(Glibc)
import Glibc
#endif

/// LMTP delivery for MTAs (RFC 2033): Postfix's `virtual_transport = lmtp:unix:…` or `lmtp:inet:…`.
///
/// Each message is spooled once (bounded memory, an unnamed temporary file), then stored once per accepted
/// recipient with its own Return-Path, Delivered-To and Received lines; each recipient's reply comes only after
/// its copy is durable (RFC 2033 §4.2: the server "MUST NOT lose the message … because the host later crashes").
/// A connection that ends before the final dot stores nothing.
public final class LMTPService: Service, Sendable {
    let live: LiveConfiguration
    var configuration: ServerConfiguration { self.live.current }
    /// The accounts recipients are looked up in: the passwd-file, or the database's (`storage.backend: postgres`).
    let accounts: any CredentialVerifier
    let target: any DeliveryTarget
    let locator: MaildirLocator
    let logger: Logger
    let hostname: String
    let metrics: ServerMetrics
    /// Threads that write LMTP copies (each blocks in fsync while its copy reaches the disk).
    public static let deliveryThreads = 16
    /// Whether copies may be written as root (`pop3d dev` started as root); `serve` never does.
    let mayWriteAsRoot: Bool
    private let prebound: [PreboundLMTPListener]
    private let onListening: @Sendable ([BoundListener]) -> Void
    /// Open connections, and whether each is idle between transactions (waiting for a command with none open).
    private let openChannels = NIOLockedValueBox<[ObjectIdentifier: (channel: any Channel, idle: Bool)]>([:])
    private let shuttingDown = NIOLockedValueBox(false)
    private let sessionCounter = ManagedAtomicCounter()
    private let group: any EventLoopGroup

    public init(
        configuration: ServerConfiguration,
        accounts: any CredentialVerifier,
        target: any DeliveryTarget,
        prebound: [PreboundLMTPListener],
        mayWriteAsRoot: Bool,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        metrics: ServerMetrics = .disabled,
        live: LiveConfiguration? = nil,
        onListening: @escaping @Sendable ([BoundListener]) -> Void = { _ in }
    ) {
        self.metrics = metrics
        self.live = live ?? LiveConfiguration(configuration)
        self.accounts = accounts
        self.target = target
        self.locator = MaildirLocator(template: configuration.maildirTemplate)
        self.prebound = prebound
        self.mayWriteAsRoot = mayWriteAsRoot
        self.group = group
        self.logger = logger
        self.onListening = onListening
        self.hostname = configuration.lmtp.hostname ?? ProcessIdentity.hostname
    }

    public func run() async throws {
        var listeners: [(LMTPListenAddress, NIOAsyncChannel<AcceptedChannel, Never>)] = []
        for listener in self.prebound {
            listeners.append((listener.address, try await self.bind(listener)))
        }
        let bound = listeners.compactMap { _, channel in channel.channel.localAddress.map { BoundListener(kind: .lmtp, address: $0) } }
        for (address, _) in listeners {
            self.logger.info("listening", metadata: ["kind": "lmtp", "address": "\(address)"])
        }
        if geteuid() == 0 && !self.mayWriteAsRoot {
            self.logger.error("LMTP deliveries are refused (451) while pop3d runs as root: set user: so that mail is never written as root")
        }
        self.onListening(bound)
        await serveListeners(
            listeners,
            serverChannels: listeners.map { $0.1.channel },
            grace: self.configuration.limits.shutdownGracePeriod,
            group: self.group,
            onShutdown: { self.closeIdleConnections() },
            closeConnections: {
                for entry in self.openChannels.withLockedValue({ Array($0.values) }) { entry.channel.close(promise: nil) }
            },
            accept: { address, listener in await self.acceptLoop(listener, address: address) }
        )
        // The socket files go with the server (a stale one would only say "connection refused").
        for listener in self.prebound {
            if case .unix(let path) = listener.address { unlink(path) }
        }
    }

    /// Graceful shutdown: connections waiting for a command with no transaction open get 421 4.3.2 and are closed
    /// now (an MTA's cached connection must not hold up a restart); the others when their transaction ends.
    private func closeIdleConnections() {
        let idle = self.openChannels.withLockedValue { open -> [any Channel] in
            self.shuttingDown.withLockedValue { $0 = true }
            return open.values.filter(\.idle).map(\.channel)
        }
        for channel in idle { Self.sayGoodbye(channel) }
    }

    static func sayGoodbye(_ channel: any Channel) {
        var buffer = channel.allocator.buffer(capacity: 64)
        LMTPReply.shuttingDown.write(into: &buffer)
        channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
    }

    /// The driver's report between commands: true when it waits for a command with no transaction open. Returns
    /// whether the server is shutting down (then the driver says 421 and ends).
    func connection(_ id: ObjectIdentifier, isIdle idle: Bool) -> Bool {
        self.openChannels.withLockedValue { open in
            open[id]?.idle = idle
            return self.shuttingDown.withLockedValue { $0 }
        }
    }

    private func bind(_ listener: PreboundLMTPListener) async throws -> NIOAsyncChannel<AcceptedChannel, Never> {
        let live = self.live
        let isTCP: Bool
        if case .tcp = listener.address { isTCP = true } else { isTCP = false }
        var bootstrap = ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 256)
            .childChannelOption(.autoRead, value: false)
        if isTCP { bootstrap = bootstrap.childChannelOption(.tcpOption(.tcp_nodelay), value: 1) }
        do {
            return try await bootstrap.bind(listener.descriptor) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let idle = TimeAmount.seconds(live.current.lmtp.idleTimeout.components.seconds)
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: idle))
                    var goodbye = ByteBuffer()
                    LMTPReply.timeout.write(into: &goodbye)
                    try channel.pipeline.syncOperations.addHandler(CloseWhenIdleHandler(goodbye: goodbye))
                    return AcceptedChannel(channel: channel)
                }
            }
        } catch {
            throw ConfigurationError(key: "listen.lmtp", "cannot listen on \(listener.address): \(error)")
        }
    }

    private func acceptLoop(_ listener: NIOAsyncChannel<AcceptedChannel, Never>, address: LMTPListenAddress) async {
        do {
            try await listener.executeThenClose { inbound in
                try await withThrowingDiscardingTaskGroup { group in
                    for try await connection in inbound {
                        group.addTask { await self.serve(connection, listener: address) }
                    }
                }
            }
        } catch {
            self.logger.error("LMTP listener failed", metadata: ["address": "\(address)", "error": "\(error)"])
        }
    }

    /// Whether a TCP client may use LMTP: loopback or `lmtp.trusted_networks`. Unix-socket clients always may
    /// (the socket's mode decides who can connect).
    static func isTrusted(_ peer: SocketAddress?, listener: LMTPListenAddress, trustedNetworks: [CIDRNetwork]) -> Bool {
        guard case .tcp = listener else { return true }
        guard let peer else { return false }
        if Self.isLoopback(peer) { return true }
        return trustedNetworks.contains { $0.contains(peer) }
    }

    static func isLoopback(_ address: SocketAddress) -> Bool {
        switch address {
        case .v4(let v4): return UInt32(bigEndian: v4.address.sin_addr.s_addr) >> 24 == 127
        case .v6(let v6):
            let bytes = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            if bytes == [UInt8](repeating: 0, count: 15) + [1] { return true }
            // ::ffff:127.x.x.x
            return bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xFF && bytes[11] == 0xFF && bytes[12] == 127
        case .unixDomainSocket: return true
        }
    }

    private func serve(_ accepted: AcceptedChannel, listener: LMTPListenAddress) async {
        let connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        do {
            connection = try await accepted.wrap()
        } catch {
            accepted.channel.close(promise: nil)
            return
        }
        let channel = connection.channel
        let id = ObjectIdentifier(channel)
        var logger = self.logger
        let session = self.sessionCounter.next()
        logger[metadataKey: "lmtp"] = "\(session)"
        let peer = channel.remoteAddress
        logger[metadataKey: "peer"] = "\(peer.map { "\($0)" } ?? "\(listener)")"
        let admitted = self.openChannels.withLockedValue { open -> Bool in
            guard open.count < self.configuration.lmtp.maximumConnections else { return false }
            open[id] = (channel, false)
            return true
        }
        defer { if admitted { _ = self.openChannels.withLockedValue { $0.removeValue(forKey: id) } } }
        if peer == nil, case .tcp = listener {
            // Closed before its address could be read (a port probe): nothing to answer.
            logger.debug("LMTP connection closed at once")
            try? await connection.executeThenClose { _, _ in }
            return
        }
        let refusal: LMTPReply? =
            !admitted ? .tooManyConnections : !Self.isTrusted(peer, listener: listener, trustedNetworks: self.configuration.lmtp.trustedNetworks) ? .notTrusted : nil
        do {
            try await connection.executeThenClose { inbound, outbound in
                if let refusal {
                    logger.warning(refusal == .notTrusted ? "LMTP connection refused: address not in lmtp.trusted_networks" : "LMTP connection refused: lmtp.max_connections reached")
                    var out = ByteBuffer()
                    refusal.write(into: &out)
                    try await outbound.write(out)
                    return
                }
                var driver = LMTPConnection(service: self, logger: logger, session: session, peer: peer, id: id)
                try await driver.run(inbound: inbound, outbound: outbound)
            }
        } catch {
            logger.debug("LMTP connection ended", metadata: ["error": "\(error)"])
        }
    }

    /// The account an address is delivered to, or nil: the whole address as a user name, else its local part
    /// without `+detail`; with `lmtp.domains`, only for those domains. Both lookups are made every time, so an
    /// unknown user and a foreign domain cost the same and get the same reply.
    func resolve(_ address: String) async throws -> String? {
        let at = address.lastIndex(of: "@")
        let local = at.map { String(address[..<$0]) } ?? address
        let domain = at.map { address[address.index(after: $0)...].lowercased() }
        var base = local
        let delimiter = self.configuration.lmtp.recipientDelimiter
        if let mark = delimiter.first, let cut = local.firstIndex(of: mark), cut != local.startIndex {
            base = String(local[..<cut])
        }
        let domains = self.configuration.lmtp.domains
        let domainAllowed = domains.isEmpty || domain.map { domains.contains($0) } == true
        // Both names are looked up whatever the domain says, so that a foreign domain costs what an unknown user does.
        let whole = try await self.accounts.lookup(user: address)
        let byLocal = try await self.accounts.lookup(user: base)
        guard domainAllowed else { return nil }
        return whole?.name ?? byLocal?.name
    }

    /// Stores one copy for `recipient` and gives its reply.
    func deliver(
        _ recipient: LMTPSession.Recipient,
        transaction: LMTPSession.Transaction,
        spool: LMTPSpool,
        session: UInt64,
        peer: SocketAddress?,
        logger: Logger
    ) async -> LMTPReply {
        var logger = logger
        logger[metadataKey: "user"] = "\(logEscaped(recipient.account))"
        if geteuid() == 0 && !self.mayWriteAsRoot {
            logger.error("LMTP delivery refused: pop3d runs as root (set user:)")
            return .localError
        }
        let found: UserRecord?
        do {
            found = try await self.accounts.lookup(user: recipient.account)
        } catch {
            logger.error("LMTP delivery deferred: account lookup failed", metadata: ["error": "\(error)"])
            return .localError
        }
        guard let record = found else {
            logger.warning("LMTP delivery deferred: the account disappeared")
            return .localError
        }
        let path: String
        let quota: MaildirQuota
        do {
            path = try self.locator.path(for: record)
            quota = try MaildirQuota(extraFields: record.extraFields)
        } catch {
            logger.error("LMTP delivery deferred: \(error)")
            return .localError
        }
        let owner = record.uid.flatMap { uid in record.gid.map { MailOwner(uid: uid, gid: $0) } }
        let prefix = LMTPTraceHeaders(
            sender: transaction.sender,
            recipient: recipient.address,
            clientName: transaction.clientName,
            clientAddress: peer,
            hostname: self.hostname,
            id: "\(ProcessIdentity.pid).\(session)",
            utf8: transaction.parameters.smtpUTF8,
            date: Date()
        ).bytes
        let request = DeliveryRequest(
            user: record.name, path: path, owner: owner, quota: quota,
            maximumSize: nil, prefix: prefix, spool: spool.descriptor, size: spool.size
        )
        let result: Result<String, DeliveryFailure>
        do {
            result = .success(try await self.target.deliver(request))
        } catch {
            result = .failure(error)
        }
        switch result {
        case .success(let name):
            logger.info("delivered", metadata: ["via": "lmtp", "file": "\(name)", "octets": "\(prefix.count + spool.size)"])
            return .delivered
        case .failure(let error):
            let reply = Self.reply(for: error, quotaFullTempfail: self.configuration.lmtp.quotaFullTempfail)
            let level: Logger.Level
            if case .temporary = error { level = .error } else { level = .notice }
            logger.log(level: level, "not delivered", metadata: ["via": "lmtp", "reply": "\(reply.code) \(reply.enhanced ?? "")", "reason": "\(error)"])
            return reply
        }
    }

    /// The one mapping of a delivery failure to its LMTP reply.
    public static func reply(for failure: DeliveryFailure, quotaFullTempfail: Bool) -> LMTPReply {
        switch failure {
        case .tooLarge: .messageTooLarge
        case .quotaExceeded: quotaFullTempfail ? .quotaExceededTemporary : .quotaExceeded
        case .temporary: .localError
        }
    }
}
