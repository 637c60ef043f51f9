import Crypto
import NIOConcurrencyHelpers
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import POP3Core
import POP3NIO
import SASL

/// What TLS negotiated, for `pop3 probe` and logs.
public struct TLSSessionInfo: Sendable {
    public var version: String
    public var cipherSuite: UInt16?
    public var alpn: String?
    /// The peer's certificates as DER, leaf first (as presented).
    public var peerCertificates: [[UInt8]]
}

/// One POP3 connection from the client side: connect, secure, discover, log in, and the transaction commands.
///
/// Not thread-safe: one task drives it. Every wait for the server has a deadline; every server line is bounded
/// and parsed strictly; server text in errors is sanitised.
public final class POP3Connection {
    public let configuration: POP3ClientConfiguration
    let channel: any Channel
    private let reader: LoopConfined<ClientReader>
    private let logger: Logger
    public private(set) var greeting: ServerStatusLine
    /// Capabilities from CAPA, learned after TLS (anything learned before TLS is discarded).
    public private(set) var serverCapabilities = ServerCapabilities()
    /// The CAPA lines as announced (sanitised).
    public var capabilities: [String] { self.serverCapabilities.lines }
    public private(set) var tls: TLSSessionInfo?
    private let observed: ObservedTLS

    final class ObservedTLS: Sendable {
        let box = NIOLockedValueBox<(alpn: String?, suite: UInt16?)>((nil, nil))
    }

    public var supportsPipelining: Bool { self.serverCapabilities.pipelining }

    // MARK: Connecting

    public static func connect(_ configuration: POP3ClientConfiguration, logger: Logger = Logger(label: "pop3")) async throws -> POP3Connection {
        let observed = ObservedTLS()
        let reader = ClientReader()
        var bootstrap = ClientBootstrap(group: configuration.eventLoopGroup)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.autoRead, value: false)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if configuration.security == .implicitTLS {
                        try channel.pipeline.syncOperations.addHandlers(try Self.makeTLSHandlers(configuration, observed: observed))
                    }
                    try channel.pipeline.syncOperations.addHandler(reader)
                }
            }
        if let local = configuration.localAddress {
            bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: local, port: 0))
        }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        } catch {
            throw POP3ClientError.connectionFailed("\(configuration.host):\(configuration.port): \(error)")
        }
        let connection = POP3Connection(configuration: configuration, channel: channel, reader: reader, observed: observed, logger: logger)
        do {
            try await connection.start()
        } catch {
            await connection.close()
            throw error
        }
        return connection
    }

    private init(configuration: POP3ClientConfiguration, channel: any Channel, reader: ClientReader, observed: ObservedTLS, logger: Logger) {
        self.configuration = configuration
        self.channel = channel
        self.reader = LoopConfined(reader, eventLoop: channel.eventLoop)
        self.observed = observed
        self.logger = logger
        self.greeting = ServerStatusLine(kind: .ok, code: nil, text: "")
    }

    private func start() async throws {
        if self.configuration.security == .implicitTLS {
            self.greeting = try await self.readStatus(mapping: Self.tlsError)
            try await self.recordTLS()
        } else {
            self.greeting = try await self.readStatus()
        }
        guard self.greeting.kind == .ok else {
            throw POP3ClientError.protocolViolation("greeting is not +OK: \(self.greeting.text)")
        }
        if self.configuration.security == .startTLS {
            // Capabilities seen before TLS are not trusted; only whether STLS is offered matters, and even then
            // we try STLS anyway and fail if it is refused (no plaintext fallback).
            let configuration = self.configuration
            let observed = self.observed
            try await self.channel.eventLoop.submit {
                try self.channel.pipeline.syncOperations.addHandler(
                    STLSClientGuard(maximumLineLength: configuration.maximumResponseLineLength) {
                        AggregateHandler(try Self.makeTLSHandlers(configuration, observed: observed))
                    },
                    position: .first
                )
            }.get()
            // The guard is in place before STLS leaves, so the reply cannot slip past it.
            try await self.send("STLS")
            let reply: ServerStatusLine
            do {
                reply = try await self.readStatus(mapping: Self.tlsError)
            } catch STLSClientError.dataAfterSTLSReply {
                throw POP3ClientError.stlsResponseInjection
            }
            guard reply.kind == .ok else { throw POP3ClientError.stlsRefused(reply.text) }
            // The handshake starts now. CAPA's reply can only arrive once it has completed, so the TLS facts
            // (version, cipher, ALPN, certificate) are read after it; nothing sensitive has been sent by then.
            try await self.refreshCapabilities(mapping: Self.tlsError)
            try await self.recordTLS()
            return
        }
        try await self.refreshCapabilities()
    }

    static func tlsError(_ error: any Error) -> any Error {
        if error is POP3ClientError { return error }
        if let stls = error as? STLSClientError, stls == .dataAfterSTLSReply { return POP3ClientError.stlsResponseInjection }
        return POP3ClientError.tlsFailed(Self.explain(error))
    }

    /// A TLS failure in words a user can act on, from swift-nio-ssl's error cases. BoringSSL's packed error codes
    /// are private to swift-nio-ssl; its reason names (CERTIFICATE_VERIFY_FAILED, …) are public only in the text of
    /// a handshake failure's error stack, so that stack alone is read for them (and kept in brackets for the expert).
    static func explain(_ error: any Error) -> String {
        if error is HandshakeTimeoutError { return "TLS handshake timed out" }
        if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname {
            return "certificate is not valid for this host name"
        }
        guard let ssl = error as? NIOSSLError else { return String("\(error)".prefix(240)) }
        switch ssl {
        case .uncleanShutdown:
            return "the connection ended abruptly (closed without TLS close_notify)"
        case .handshakeFailed(let boring):
            let reasons: String
            switch boring {
            case .sslError(let stack), .unknownError(let stack): reasons = stack.map { "\($0)" }.joined(separator: "; ")
            default: reasons = "\(boring)"
            }
            if reasons.contains("CERTIFICATE_VERIFY_FAILED") {
                return "certificate not trusted: unknown or self-signed issuer, or expired (use --ca-file or --pin; `pop3 probe` shows the chain)"
            }
            if ["UNSUPPORTED_PROTOCOL", "WRONG_VERSION", "TLSV1_ALERT_PROTOCOL_VERSION"].contains(where: reasons.contains) {
                return "no common TLS version (TLS 1.2 or later is required) [\(reasons.prefix(160))]"
            }
            return "handshake failed [\(reasons.prefix(200))]"
        default:
            return String("\(ssl)".prefix(240))
        }
    }

    /// TLS handlers for this client: ServerHello sniffer (cipher suite), TLS with the trust policy, ALPN observer.
    static func makeTLSHandlers(_ configuration: POP3ClientConfiguration, observed: ObservedTLS) throws -> [any ChannelHandler] {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.applicationProtocols = ["pop3"]
        let isIP = (try? SocketAddress(ipAddress: configuration.host, port: 0)) != nil
        let handler: NIOSSLClientHandler
        switch configuration.trust {
        case .system:
            handler = try NIOSSLClientHandler(context: NIOSSLContext(configuration: tls), serverHostname: isIP ? nil : configuration.host)
        case .caFile(let path):
            tls.trustRoots = .file(path)
            handler = try NIOSSLClientHandler(context: NIOSSLContext(configuration: tls), serverHostname: isIP ? nil : configuration.host)
        case .sha256Pin(let pin):
            // VERIFY_PEER with a custom callback that replaces chain validation by the pin check. (With `.none`,
            // BoringSSL would call the callback but ignore a failed result.)
            tls.certificateVerification = .noHostnameVerification
            handler = try NIOSSLClientHandler(
                context: NIOSSLContext(configuration: tls),
                serverHostname: isIP ? nil : configuration.host,
                customVerificationCallback: { certificates, promise in
                    guard let leaf = certificates.first, let der = try? leaf.toDERBytes() else {
                        promise.succeed(.failed)
                        return
                    }
                    let spki = (try? leaf.extractPublicKey().toSPKIBytes()) ?? []
                    let matches = Array(SHA256.hash(data: der)) == pin || (!spki.isEmpty && Array(SHA256.hash(data: spki)) == pin)
                    promise.succeed(matches ? .certificateVerified : .failed)
                }
            )
        }
        return [
            ServerHelloSniffer { suite in observed.box.withLockedValue { $0.suite = suite } },
            handler,
            HandshakeDeadlineHandler(timeout: configuration.replyTimeout),
            TLSHandshakeObserver { result in observed.box.withLockedValue { $0.alpn = result.negotiatedProtocol } },
        ]
    }

    private func recordTLS() async throws {
        let channel = self.channel
        let (version, chain): (String, [[UInt8]]) = try await channel.eventLoop.submit {
            let handler = try channel.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self)
            let version = handler.tlsVersion.map { "\($0)" } ?? "unknown"
            let leaf = handler.peerCertificate.flatMap { try? $0.toDERBytes() }
            return (version, leaf.map { [$0] } ?? [])
        }.get()
        let observed = self.observed.box.withLockedValue { $0 }
        if let alpn = observed.alpn, alpn != "pop3" {
            throw POP3ClientError.alpnMismatch(sanitize(Array(alpn.utf8)))
        }
        self.tls = TLSSessionInfo(version: version, cipherSuite: observed.suite, alpn: observed.alpn, peerCertificates: chain)
    }

    // MARK: Commands

    public func refreshCapabilities() async throws {
        try await self.refreshCapabilities(mapping: { $0 })
    }

    private func refreshCapabilities(mapping: (any Error) -> any Error) async throws {
        try await self.send("CAPA")
        let status = try await self.readStatus(mapping: mapping)
        guard status.kind == .ok else {
            self.serverCapabilities = ServerCapabilities()
            return
        }
        var lines: [[UInt8]] = []
        try await self.readLines(limit: self.configuration.maximumCapabilityLines) { lines.append($0) }
        self.serverCapabilities = ServerCapabilities(rawLines: lines)
    }

    /// The SASL mechanisms CAPA announced, upper-cased.
    public var saslMechanisms: [String] { self.serverCapabilities.saslMechanisms }

    /// What `method` resolves to on this connection: `auto` becomes the strongest mechanism offered (SCRAM-PLUS
    /// only with TLS); an explicit one must be offered (USER is assumed when CAPA says nothing, as RFC 1939 servers
    /// do not list it). Nil when nothing fits.
    public func resolve(_ method: AuthenticationMethod) -> AuthenticationMethod? {
        let offered = self.saslMechanisms
        func available(_ candidate: AuthenticationMethod) -> Bool {
            switch candidate {
            case .auto: return false
            case .user: return self.serverCapabilities.userPass
            case .scramSHA256Plus: return self.tls != nil && offered.contains("SCRAM-SHA-256-PLUS")
            default: return offered.contains(candidate.saslName!)
            }
        }
        if method == .auto { return AuthenticationMethod.automaticOrder.first(where: available) }
        return available(method) ? method : nil
    }

    /// Logs in with `configuration.authentication` (by default the strongest mechanism offered). Refuses on a
    /// connection without TLS unless the configuration is explicitly insecure.
    public func login(user: String, password: String) async throws {
        let method = self.configuration.authentication
        precondition(!method.usesBearerToken, "OAuth methods log in with login(user:bearerToken:)")
        guard let chosen = self.resolve(method) else {
            if method == .auto { throw POP3ClientError.noUsableMechanism }
            throw POP3ClientError.mechanismNotOffered(method.saslName ?? "USER")
        }
        self.logger.debug("login mechanism", metadata: ["mechanism": "\(chosen)"])
        switch chosen {
        case .scramSHA256Plus, .scramSHA256:
            do {
                try await self.loginSCRAM(chosen == .scramSHA256Plus ? .scramSHA256Plus : .scramSHA256, user: user, password: password)
            } catch POP3ClientError.authenticationFailed(let code, let text) where method == .auto && code == .auth {
                // Not retried with PLAIN: a -PLUS failure can be a man in the middle, who must not get the password.
                throw POP3ClientError.authenticationFailed(
                    code: code,
                    text: "\(text) (\(chosen.saslName!) was chosen automatically; if the account has no SCRAM credentials on the server, use --auth plain)"
                )
            }
        case .plain:
            try await self.loginPlain(user: user, password: password)
        default:
            try await self.loginUserPass(user: user, password: password)
        }
    }

    /// Logs in with an OAuth 2.0 access token: OAUTHBEARER (RFC 7628) or XOAUTH2, as `configuration.authentication`
    /// says (which must be one of them and offered). A refused token's JSON error is acknowledged and reported.
    public func login(user: String, bearerToken token: String) async throws {
        let method = self.configuration.authentication
        precondition(method.usesBearerToken, "login(user:bearerToken:) is for oauthbearer and xoauth2")
        guard self.resolve(method) != nil else { throw POP3ClientError.mechanismNotOffered(method.saslName!) }
        let mechanism: SASLMechanism = method == .oauthBearer ? .oauthBearer : .xoauth2
        let message =
            mechanism == .oauthBearer
            ? OAuthBearerMessage.oauthBearer(user: user, token: token, host: self.configuration.host, port: self.configuration.port)
            : OAuthBearerMessage.xoauth2(user: user, token: token)
        try await self.startSASL(mechanism, initialResponse: message, redacted: "<token>")
        let reply = try await self.readStatus()
        switch reply.kind {
        case .ok:
            return
        case .err:
            throw POP3ClientError.authenticationFailed(code: reply.code, text: reply.text)
        case .continuation:
            // The error challenge: JSON with a status (RFC 7628 §3.2.2); acknowledge it, then the server says -ERR.
            let detail = Base64.decode(reply.text).map { sanitize($0) } ?? ""
            try await self.send(Base64.encode(OAuthBearerMessage.errorAcknowledgement(mechanism: mechanism)))
            let final = try await self.readStatus()
            let text = final.kind == .err ? final.text : "unexpected \(final.kind) after the OAuth error"
            throw POP3ClientError.authenticationFailed(code: final.code, text: detail.isEmpty ? text : "\(text) \(detail)")
        }
    }

    /// Sends `AUTH MECH` with the initial response inline when the command fits the 255-octet line of RFC 2449 §4,
    /// else `AUTH MECH` alone and the response after the server's empty challenge (RFC 5034 §4).
    private func startSASL(_ mechanism: SASLMechanism, initialResponse: [UInt8], redacted: String) async throws {
        let encoded = initialResponse.isEmpty ? "=" : Base64.encode(initialResponse)
        let inline = "AUTH \(mechanism.rawValue) \(encoded)"
        if inline.utf8.count + 2 <= POP3Defaults.maximumCommandLineLength {
            try await self.send(inline, redacted: "AUTH \(mechanism.rawValue) \(redacted)")
            return
        }
        try await self.send("AUTH \(mechanism.rawValue)")
        let challenge = try await self.readStatus()
        guard challenge.kind == .continuation else {
            throw POP3ClientError.authenticationFailed(code: challenge.code, text: challenge.text)
        }
        try await self.send(encoded, redacted: redacted)
    }

    private func loginPlain(user: String, password: String) async throws {
        let response = SASLPlainCredentials(authenticationID: user, password: password).encodedResponse()
        try await self.send("AUTH PLAIN \(response)", redacted: "AUTH PLAIN <redacted>")
        let reply = try await self.readStatus()
        guard reply.kind == .ok else {
            if reply.kind == .continuation { try await self.cancelSASL() }
            throw POP3ClientError.authenticationFailed(code: reply.code, text: reply.text)
        }
    }

    /// SCRAM (RFC 5802, RFC 7677) over POP3 AUTH (RFC 5034). The server must prove it holds the account's keys
    /// (its signature in server-final) before the client sends anything else; with -PLUS the exchange is bound
    /// to this TLS connection's server certificate (`tls-server-end-point`), so a TLS-terminating man in the middle
    /// cannot relay it.
    private func loginSCRAM(_ mechanism: SASLMechanism, user: String, password: String) async throws {
        var binding: ChannelBinding?
        if mechanism.usesChannelBinding {
            guard let leaf = self.tls?.peerCertificates.first, let endPoint = ChannelBinding.tlsServerEndPoint(certificateDER: leaf) else {
                throw POP3ClientError.serverAuthenticationFailed("no server certificate to bind SCRAM-SHA-256-PLUS to")
            }
            binding = endPoint
        }
        var exchange = SCRAMClientExchange(
            mechanism: mechanism,
            user: user,
            password: StringPreparation.saslPrep(password) ?? password,
            channelBinding: binding,
            tlsActive: self.tls != nil,
            serverOffersPlus: self.saslMechanisms.contains(mechanism.plusVariant.rawValue)
        )
        try await self.startSASL(mechanism, initialResponse: exchange.clientFirst(), redacted: "<client-first>")
        let serverFirst = try await self.readChallenge()
        let clientFinal: [UInt8]
        do {
            clientFinal = try exchange.receiveServerFirst(serverFirst)
        } catch {
            try await self.cancelSASL()
            throw POP3ClientError.serverAuthenticationFailed(error.description)
        }
        try await self.send(Base64.encode(clientFinal), redacted: "<client-final>")
        let serverFinal = try await self.readChallenge()
        do {
            try exchange.receiveServerFinal(serverFinal)
        } catch {
            try await self.cancelSASL()
            throw POP3ClientError.serverAuthenticationFailed(error.description)
        }
        // Server-final came as a challenge (POP3 has no "additional data with success"); an empty response ends it.
        try await self.send("")
        let reply = try await self.readStatus()
        guard reply.kind == .ok else {
            throw POP3ClientError.authenticationFailed(code: reply.code, text: reply.text)
        }
    }

    /// Reads a SASL challenge (`+ base64`); a -ERR is a failed login, a +OK before the exchange is over a server
    /// that skipped the proof of its identity.
    private func readChallenge() async throws -> [UInt8] {
        let reply = try await self.readStatus()
        switch reply.kind {
        case .continuation:
            guard let bytes = reply.text.isEmpty ? [] : Base64.decode(reply.text) else {
                try await self.cancelSASL()
                throw POP3ClientError.protocolViolation("SASL challenge is not base64")
            }
            return bytes
        case .err:
            throw POP3ClientError.authenticationFailed(code: reply.code, text: reply.text)
        case .ok:
            throw POP3ClientError.serverAuthenticationFailed("the server accepted the login without proving it knows the password")
        }
    }

    /// Ends a SASL exchange from our side (`*`, RFC 5034 §4) and reads the server's -ERR.
    private func cancelSASL() async throws {
        try await self.send("*")
        _ = try? await self.readStatus()
    }

    private func loginUserPass(user: String, password: String) async throws {
        try await self.send("USER \(user)")
        let userReply = try await self.readStatus()
        guard userReply.kind == .ok else { throw POP3ClientError.authenticationFailed(code: userReply.code, text: userReply.text) }
        try await self.send("PASS \(password)", redacted: "PASS <redacted>")
        let passReply = try await self.readStatus()
        guard passReply.kind == .ok else { throw POP3ClientError.authenticationFailed(code: passReply.code, text: passReply.text) }
    }

    public func stat() async throws -> (count: Int, size: Int) {
        let reply = try await self.command("STAT")
        let listing = try Self.parsed { () throws(ListingParseError) in try DropListing.parse(reply.text) }
        return (listing.count, listing.size)
    }

    /// LIST: message number → size.
    public func list() async throws -> [Int: Int] {
        _ = try await self.command("LIST")
        var result: [Int: Int] = [:]
        // Each line is checked as it arrives and only its two numbers are kept, so an endless or padded listing
        // costs bounded memory (docs/security-cases.md 92).
        try await self.readLines(limit: self.configuration.maximumListingLines) { line in
            let listing = try Self.parsed { () throws(ListingParseError) in try ScanListing.parse(line) }
            result[listing.number] = listing.size
        }
        return result
    }

    /// UIDL: message number → unique-id (validated: 1–70 chars in 0x21–0x7E, unique).
    public func uidl() async throws -> [(number: Int, uid: String)] {
        _ = try await self.command("UIDL")
        var collector = UniqueIDListing.Collector()
        try await self.readLines(limit: self.configuration.maximumListingLines) { line in
            try Self.parsed { () throws(ListingParseError) in try collector.add(line) }
        }
        return collector.listings.map { ($0.number, $0.uid.value) }
    }

    /// RETR for each number, pipelined in a bounded window when the server announces PIPELINING. For each
    /// message, `begin` is called, then `chunk` with unstuffed bytes (CRLF lines as sent), then `end` once the
    /// terminator arrived. An error from the callbacks or the server aborts the connection.
    public func retrieve(
        _ numbers: [Int],
        begin: (Int) async throws -> Void,
        chunk: (Int, ByteBuffer) async throws -> Void,
        end: (Int) async throws -> Void
    ) async throws {
        var window = self.pipelineWindow(numbers.count)
        for (position, number) in numbers.enumerated() {
            for index in window.commandsToSend(beforeReplyTo: position) {
                try await self.send("RETR \(numbers[index])")
            }
            let status = try await self.readStatus()
            guard status.kind == .ok else {
                throw POP3ClientError.commandFailed(command: "RETR \(number)", code: status.code, text: status.text)
            }
            try await begin(number)
            var unstuffer = DotUnstuffer()
            while true {
                let (piece, done): (ByteBuffer, Bool) = try await self.withReader { buffer, eof in
                    guard buffer.readableBytes > 0 || eof else { return nil }
                    if buffer.readableBytes == 0 && eof { throw POP3ClientError.connectionClosed }
                    var out = ByteBuffer()
                    out.reserveCapacity(buffer.readableBytes)
                    let done = unstuffer.decode(&buffer, into: &out)
                    return (out, done)
                }
                if piece.readableBytes > 0 { try await chunk(number, piece) }
                if done { break }
            }
            try await end(number)
        }
    }

    /// The window for a run of `count` commands: the configured one when the server announced PIPELINING, else 1.
    private func pipelineWindow(_ count: Int) -> PipelineWindow {
        PipelineWindow(total: count, window: self.supportsPipelining ? self.configuration.pipelineWindow : 1)
    }

    /// A listing parser's result, its error reported as a protocol violation.
    private static func parsed<T>(_ body: () throws(ListingParseError) -> T) throws(POP3ClientError) -> T {
        switch Result(catching: body) {
        case .success(let value): return value
        case .failure(let error): throw .protocolViolation(error.description)
        }
    }

    /// DELE for each number (pipelined when allowed); every reply must be +OK.
    public func delete(_ numbers: [Int]) async throws {
        var window = self.pipelineWindow(numbers.count)
        for (position, number) in numbers.enumerated() {
            for index in window.commandsToSend(beforeReplyTo: position) {
                try await self.send("DELE \(numbers[index])")
            }
            let status = try await self.readStatus()
            guard status.kind == .ok else {
                throw POP3ClientError.commandFailed(command: "DELE \(number)", code: status.code, text: status.text)
            }
        }
    }

    /// QUIT: the server commits deletions (UPDATE state) and answers; only +OK means they are done.
    public func quit() async throws {
        let reply = try await self.command("QUIT")
        _ = reply
        await self.close()
    }

    public func close() async {
        try? await self.channel.close()
    }

    // MARK: Wire

    @discardableResult
    func command(_ line: String) async throws -> ServerStatusLine {
        try await self.send(line)
        let status = try await self.readStatus()
        guard status.kind == .ok else {
            throw POP3ClientError.commandFailed(command: line.split(separator: " ").first.map(String.init) ?? line, code: status.code, text: status.text)
        }
        return status
    }

    func send(_ line: String, redacted: String? = nil) async throws {
        self.logger.trace("C: \(redacted ?? line)")
        var buffer = self.channel.allocator.buffer(capacity: line.utf8.count + 2)
        buffer.writeString(line)
        buffer.writeStaticString("\r\n")
        do {
            try await self.channel.writeAndFlush(buffer)
        } catch {
            // Prefer the reason the reader saw (handshake timeout, TLS alert) over a bare "closed".
            let reader = self.reader
            let seen = try? await self.channel.eventLoop.submit { reader.value.failure }.get()
            if let seen {
                throw Self.tlsError(seen)
            }
            throw POP3ClientError.connectionClosed
        }
    }

    func withReader<T: Sendable>(_ body: @escaping (inout ByteBuffer, Bool) throws -> T?) async throws -> T {
        let reader = self.reader
        let timeout = self.configuration.replyTimeout
        return try await self.channel.eventLoop.flatSubmit {
            reader.value.process(timeout: timeout, body)
        }.get()
    }

    /// Reads one line without its CRLF, bounded by the response-line limit.
    func readLine() async throws -> [UInt8] {
        let limit = self.configuration.maximumResponseLineLength
        return try await self.withReader { buffer, eof in
            let view = buffer.readableBytesView
            guard let lf = view.firstIndex(of: UInt8(ascii: "\n")) else {
                if view.count > limit { throw POP3ClientError.protocolViolation("server line longer than \(limit) octets") }
                if eof { throw POP3ClientError.connectionClosed }
                return nil
            }
            let length = lf - view.startIndex
            guard length + 1 <= limit else { throw POP3ClientError.protocolViolation("server line longer than \(limit) octets") }
            var line = buffer.readBytes(length: length)!
            buffer.moveReaderIndex(forwardBy: 1)
            if line.last == UInt8(ascii: "\r") { line.removeLast() }
            return line
        }
    }

    func readStatus(mapping: (any Error) -> any Error = { $0 }) async throws -> ServerStatusLine {
        do {
            let line = try await self.readLine()
            do {
                let status = try ServerStatusLine.parse(line, maximumLength: self.configuration.maximumResponseLineLength)
                self.logger.trace("S: \(status.kind) \(status.text)")
                return status
            } catch {
                throw POP3ClientError.protocolViolation("not a POP3 status line: \(sanitize(line.prefix(80)))")
            }
        } catch {
            throw mapping(error)
        }
    }

    /// Hands each line of a multi-line reply (un-stuffed) to `each` as it arrives, without keeping it; more than
    /// `limit` lines, or an error from `each`, fail the connection.
    func readLines(limit: Int, _ each: ([UInt8]) throws -> Void) async throws {
        var count = 0
        while true {
            guard case .content(let line) = MultiLineReplyLine(try await self.readLine()) else { return }
            guard count < limit else {
                throw POP3ClientError.protocolViolation("multi-line reply longer than \(limit) lines")
            }
            count += 1
            try each(line)
        }
    }
}

/// Adds several handlers where one is expected (STLS guard inserts TLS as a unit).
final class AggregateHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let handlers: [any ChannelHandler]
    init(_ handlers: [any ChannelHandler]) { self.handlers = handlers }

    func handlerAdded(context: ChannelHandlerContext) {
        do {
            try context.pipeline.syncOperations.addHandlers(self.handlers, position: .after(self))
        } catch {
            context.fireErrorCaught(error)
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(data)
    }
}

extension POP3Connection {
    /// Connects with certificate verification off only to record the chain the server presents, then closes
    /// without sending a single POP3 command (no credential can leak). For `pop3 probe`, so that a user whose
    /// verification fails can still see the fingerprints to pin.
    public static func inspectCertificates(_ configuration: POP3ClientConfiguration) async throws -> [[UInt8]] {
        let captured = NIOLockedValueBox<[[UInt8]]>([])
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        tls.applicationProtocols = ["pop3"]
        let context = try NIOSSLContext(configuration: tls)
        let isIP = (try? SocketAddress(ipAddress: configuration.host, port: 0)) != nil
        let makeHandler: @Sendable () throws -> NIOSSLClientHandler = {
            try NIOSSLClientHandler(
                context: context,
                serverHostname: isIP ? nil : configuration.host,
                customVerificationCallback: { certificates, promise in
                    captured.withLockedValue { $0 = certificates.compactMap { try? $0.toDERBytes() } }
                    promise.succeed(.certificateVerified)
                }
            )
        }
        let reader = ClientReader()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.autoRead, value: false)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if configuration.security == .implicitTLS {
                        try channel.pipeline.syncOperations.addHandler(try makeHandler())
                    }
                    try channel.pipeline.syncOperations.addHandler(reader)
                }
            }
            .connect(host: configuration.host, port: configuration.port).get()
        let bound = LoopConfined(reader, eventLoop: channel.eventLoop)
        func line() async throws -> [UInt8] {
            try await channel.eventLoop.flatSubmit {
                bound.value.process(timeout: configuration.replyTimeout) { buffer, _ in
                    guard let lf = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
                        if buffer.readableBytes > configuration.maximumResponseLineLength { throw POP3ClientError.protocolViolation("line too long") }
                        return nil
                    }
                    let bytes = buffer.readBytes(length: lf - buffer.readerIndex + 1)!
                    return bytes
                }
            }.get()
        }
        defer { channel.close(promise: nil) }
        _ = try await line()  // greeting (after the handshake for implicit TLS)
        if configuration.security == .startTLS {
            try await channel.eventLoop.submit {
                try channel.pipeline.syncOperations.addHandler(STLSClientGuard { try makeHandler() }, position: .first)
            }.get()
            try await channel.writeAndFlush(ByteBuffer(string: "STLS\r\n"))
            let reply = try await line()
            guard reply.starts(with: "+OK".utf8) else { throw POP3ClientError.stlsRefused(sanitize(reply)) }
            // Wait for the handshake: the chain is captured during it.
            try await channel.writeAndFlush(ByteBuffer(string: "NOOP\r\n"))
            _ = try await line()
        }
        return captured.withLockedValue { $0 }
    }
}

/// Like `NIOLoopBound`, but may be created off the loop: the value is only touched on `eventLoop` (checked).
struct LoopConfined<Value>: @unchecked Sendable {
    // @unchecked: every access goes through `value`, which asserts it runs on the owning event loop.
    private let _value: Value
    let eventLoop: any EventLoop

    init(_ value: Value, eventLoop: any EventLoop) {
        self._value = value
        self.eventLoop = eventLoop
    }

    var value: Value {
        self.eventLoop.preconditionInEventLoop()
        return self._value
    }
}
