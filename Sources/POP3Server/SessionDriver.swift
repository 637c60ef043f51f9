import Accounts
import Logging
import NIOConcurrencyHelpers
import MailStore
import NIOCore
import POP3Core
import POP3NIO
import NIOPosix
import SASL
import SystemIO

/// Runs one connection: feeds lines to the pure `ServerSession` and carries out the actions it returns against
/// the credential verifier and the mail store.
struct SessionDriver {
    /// Message bytes read from the store per chunk, and the output batch size.
    static let chunkSize = 64 * 1024

    var session: ServerSession
    let verifier: any CredentialVerifier
    let oauth: OAuth2Validator?
    let maildrops: any MaildropProvider
    let locator: MaildirLocator
    let penalty: AuthPenalty
    /// The least time a failed login takes from the start of its credential check (`auth.failure_delay`).
    let failureDelay: Duration
    let loginDelay: LoginDelay
    let policy: ServerPolicy
    let retrievalLog: any RetrievalTimes
    /// Seconds since the epoch (injected for tests).
    let now: @Sendable () -> Int64
    let clientAddress: NIOLockedValueBox<SocketAddress?>
    /// The TLS channel binding of this connection once TLS is up (`tls-server-end-point` of our certificate).
    let channelBinding: NIOLockedValueBox<ChannelBinding?>
    var logger: Logger
    /// The connection (session id, listener, TLS, how the server ended it) and the metrics its work counts in.
    let record: ConnectionRecord
    let metrics: ServerMetrics
    private var maildrop: (any Maildrop)?
    /// What the session did, for its summary line and metrics.
    private var summary = Summary()
    /// The multi-step SASL exchange in progress (SCRAM, OAuth), if any.
    private var exchange: SASLExchangeState?
    /// With EXPIRE on for this user: the user's name and first-retrieval log, as loaded at login.
    private var expiry: (user: String, log: [String: Int64])?

    init(
        session: ServerSession,
        verifier: any CredentialVerifier,
        oauth: OAuth2Validator? = nil,
        maildrops: any MaildropProvider,
        locator: MaildirLocator,
        penalty: AuthPenalty,
        failureDelay: Duration,
        loginDelay: LoginDelay,
        policy: ServerPolicy,
        retrievalLog: any RetrievalTimes,
        now: @escaping @Sendable () -> Int64 = { WallClock.now() / 1_000_000_000 },
        clientAddress: NIOLockedValueBox<SocketAddress?>,
        channelBinding: NIOLockedValueBox<ChannelBinding?> = NIOLockedValueBox(nil),
        record: ConnectionRecord,
        metrics: ServerMetrics,
        logger: Logger
    ) {
        self.record = record
        self.metrics = metrics
        self.channelBinding = channelBinding
        self.loginDelay = loginDelay
        self.policy = policy
        self.retrievalLog = retrievalLog
        self.now = now
        self.session = session
        self.verifier = verifier
        self.oauth = oauth
        self.maildrops = maildrops
        self.locator = locator
        self.penalty = penalty
        self.failureDelay = failureDelay
        self.clientAddress = clientAddress
        self.logger = logger
    }

    consuming func run(_ connection: ConnectionChannel) async {
        var failure: (any Error)?
        do {
            try await connection.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                try await self.write(ServerSession.greeting, to: outbound)
                try await self.loop(&iterator, connection: connection, outbound: outbound)
            }
        } catch {
            failure = error
            self.logger.debug("connection ended", metadata: ["error": "\(error)"])
        }
        // A session that did not reach UPDATE deletes nothing: just unlock the maildrop.
        if let maildrop = self.maildrop {
            await self.recordRetrievals(maildrop, deleting: [])
            await maildrop.release()
            self.maildrop = nil
        }
        self.finish(end: self.summary.end ?? self.record.endWithoutQuit(error: failure))
    }

    /// One line and the metrics for the whole session: who, over what, what was done, how it ended. Never a
    /// credential or message content.
    private func finish(end: SessionEnd) {
        let duration = ContinuousClock.now - self.record.started
        self.metrics.sessionEnded(self.record.listener, end, duration: duration)
        var metadata: Logger.Metadata = [
            "listener": "\(self.record.listener.rawValue)",
            "client": "\(self.clientAddress.withLockedValue { $0 }.map(Self.hostAndPort) ?? "?")",
            "end": "\(end.rawValue)",
            "duration": "\(Self.seconds(duration))",
            "retrieved": "\(self.summary.retrievedMessages)",
            "retrieved-octets": "\(self.summary.retrievedOctets)",
            "deleted": "\(self.summary.deletedMessages)",
            "deleted-octets": "\(self.summary.deletedOctets)",
        ]
        if let tls = self.record.tls.established {
            metadata["tls"] = "\(tls.version)"
            metadata["cipher"] = "\(tls.cipher)"
        } else if let reason = self.record.tls.failure {
            metadata["tls-failure"] = "\(reason.rawValue)"
        }
        if let mechanism = self.session.loginMechanism { metadata["mechanism"] = "\(ServerMetrics.mechanismLabel(mechanism))" }
        self.logger.info("session ended", metadata: metadata)
    }

    /// `192.0.2.1:50000`, `[2001:db8::1]:50000`.
    static func hostAndPort(_ address: SocketAddress) -> String {
        guard let ip = address.ipAddress else { return "\(address)" }
        let port = address.port.map(String.init) ?? "?"
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    /// Seconds with millisecond precision, for the summary line.
    static func seconds(_ duration: Duration) -> String {
        let milliseconds = ServerMetrics.nanoseconds(duration) / 1_000_000
        let fraction = String(milliseconds % 1000)
        return "\(milliseconds / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction
    }

    /// Counts a login's outcome (`success` or a failure label) under the mechanism it used.
    private func countLogin(_ result: String) {
        self.metrics.login(mechanism: self.session.loginMechanism ?? "other", result: result)
    }

    private mutating func loop(
        _ iterator: inout NIOAsyncChannelInboundStream<POP3InboundFrame>.AsyncIterator,
        connection: ConnectionChannel,
        outbound: NIOAsyncChannelOutboundWriter<POP3OutboundFrame>
    ) async throws {
        while let frame = try await iterator.next() {
            var action: ServerSession.Action
            switch frame {
            case .line(let line): action = self.session.receive(line: line)
            case .overlongLine: action = self.session.receiveOverlongLine()
            case .tlsStarted: continue
            }
            // Perform the action; some actions produce a follow-up action.
            while true {
                switch action {
                case .respond(let response):
                    try await self.write(response, to: outbound)
                case .respondLines(let status, let lines):
                    var buffer = ByteBuffer()
                    status.write(into: &buffer)
                    for line in lines {
                        buffer.writeString(line)
                        buffer.writeStaticString("\r\n")
                    }
                    buffer.writeStaticString(".\r\n")
                    try await self.send(buffer, to: outbound)
                case .respondScanListing(let status, let kind):
                    var buffer = ByteBuffer()
                    status.write(into: &buffer)
                    self.session.writeScanListing(kind, into: &buffer)
                    try await self.send(buffer, to: outbound)
                case .saslContinuation(let challenge):
                    try await outbound.write(.bytes(ByteBuffer(string: "+ \(Base64.encode(challenge))\r\n")))
                case .saslStep(let mechanism, let response, let first):
                    action = await self.saslStep(mechanism, response: response, first: first, connection: connection)
                    continue
                case .login(let user, let password):
                    action = await self.login(user: user, password: password, connection: connection)
                    continue
                case .sendMessage(let status, let index, let limit):
                    try await self.sendMessage(index: index, status: status, bodyLineLimit: limit, outbound: outbound)
                case .startTLS(let status):
                    var buffer = ByteBuffer()
                    status.write(into: &buffer)
                    try await outbound.write(.startTLS(buffer))
                    // Everything read before the switch came in plaintext after STLS: drop it (RFC 2595 §4,
                    // docs/security-cases.md cases 1–3).
                    var dropped = 0
                    while let frame = try await iterator.next() {
                        if case .tlsStarted = frame { break }
                        dropped += 1
                    }
                    if dropped > 0 { self.logger.notice("dropped plaintext sent after STLS", metadata: ["lines": "\(dropped)"]) }
                    self.session.tlsEstablished()
                case .commit(let indices):
                    action = await self.commit(deleting: indices)
                    continue
                case .respondAndClose(let response):
                    if self.summary.end == nil { self.summary.end = self.session.closedAfterBadCommands ? .tooManyErrors : .quit }
                    try await self.write(response, to: outbound)
                    return
                }
                break
            }
        }
    }

    /// Writes bytes to the client, counting them for `pop3d who`.
    private func send(_ buffer: ByteBuffer, to outbound: NIOAsyncChannelOutboundWriter<POP3OutboundFrame>) async throws {
        self.record.sent(buffer.readableBytes)
        try await outbound.write(.bytes(buffer))
    }

    private func write(_ response: StatusResponse, to outbound: NIOAsyncChannelOutboundWriter<POP3OutboundFrame>) async throws {
        var buffer = ByteBuffer()
        response.write(into: &buffer)
        try await self.send(buffer, to: outbound)
    }

    private mutating func login(user rawUser: String, password rawPassword: String, connection: ConnectionChannel) async -> ServerSession.Action {
        // RFC 6856: UTF-8 user names in NFC, passwords through SASLprep (ASCII unchanged). A password SASLprep
        // refuses is checked as sent, so that it fails like any wrong one.
        let user = StringPreparation.userName(rawUser)
        let password = StringPreparation.saslPrep(rawPassword) ?? rawPassword
        if let refusal = await self.admit(user: user) { return refusal }
        let record: UserRecord
        let checkStarted = ContinuousClock.now
        do {
            guard case .success(let found) = try await self.verifier.authenticate(user: user, password: password) else {
                await self.failed(user: user, credential: password, since: checkStarted, reason: "wrong password or unknown user")
                return self.session.loginFailed(.invalidCredentials)
            }
            record = found
        } catch {
            return self.loginFailed(.credentialStoreFailed("\(error)"), user: user)
        }
        return await self.openSession(record, connection: connection)
    }

    /// Before any credential check: LOGIN-DELAY (announced, so it is answered before the password is checked,
    /// RFC 2449 §8.1.1; the caller is then in `.loggingIn` state) and the penalty wait (waited out first, so the time
    /// of a reply says nothing about the password). Returns the refusal, or nil to go on.
    private mutating func admit(user: String) async -> ServerSession.Action? {
        guard await self.loginDelayAllows(user) else { return self.session.loginFailed(.loginDelay) }
        await self.waitOutPenalty()
        return nil
    }

    private mutating func loginDelayAllows(_ user: String) async -> Bool {
        // The real client (behind a trusted proxy: the one its PROXY header named).
        let peer = self.clientAddress.withLockedValue { $0 }
        self.logger[metadataKey: "client"] = "\(peer.map(Self.hostAndPort) ?? "?")"
        guard await self.loginDelay.mayLogInShared(user) else {
            SessionFailure.loginDelay.log(self.logger, user: user)
            self.countLogin(SessionFailure.Label.loginDelay.rawValue)
            return false
        }
        return true
    }

    /// A failed login other than a credential check (those go through `failed`): logged once through the failure
    /// model, answered with its reply. The session must be in `.loggingIn` state.
    private mutating func loginFailed(_ failure: SessionFailure, user: String) -> ServerSession.Action {
        failure.log(self.logger, user: user)
        self.countLogin(failure.label.rawValue)
        guard let reply = failure.loginFailure else { preconditionFailure("\(failure.label) is not a login failure") }
        return self.session.loginFailed(reply)
    }

    private func waitOutPenalty() async {
        let peer = self.clientAddress.withLockedValue { $0 }
        let (wait, failures) = await self.penalty.admitShared(peer)
        if wait > .zero {
            self.metrics.penaltyDelay(wait)
            self.logger.notice("auth penalty", metadata: ["delay": "\(wait)", "failures": "\(failures)"])
            try? await Task.sleep(for: wait)
        }
    }

    /// A failed credential check of any kind: counts toward the penalty, logs (never the credential), and waits out
    /// the failure delay from `since` (Dovecot's auth_failure_delay; the escalating penalty comes on top for the next
    /// attempts). The caller then answers as for a wrong password.
    private func failed(user: String, credential: String, since checkStarted: ContinuousClock.Instant, reason: String) async {
        let peer = self.clientAddress.withLockedValue { $0 }
        await self.penalty.recordFailureShared(peer, user: user, password: credential)
        SessionFailure.credentialsRejected(reason: reason).log(self.logger, user: user)
        self.countLogin(SessionFailure.Label.authFailed.rawValue)
        try? await Task.sleep(until: checkStarted + self.failureDelay, clock: .continuous)
    }

    /// Opens and locks the maildrop of an authenticated account; answers `loginSucceeded` or `loginFailed`.
    private mutating func openSession(_ record: UserRecord, connection: ConnectionChannel) async -> ServerSession.Action {
        let user = record.name
        let path: String
        do {
            path = try self.locator.path(for: record)
        } catch {
            return self.loginFailed(.noMaildir("\(error)"), user: user)
        }
        let (expireDays, invalidExpire) = self.policy.expireDays(extraFields: record.extraFields)
        if let invalidExpire {
            self.logger.warning("passwd-file expire_days not understood; using the server's", metadata: ["user": "\(logEscaped(user))", "field": "\(logEscaped(invalidExpire))"])
        }
        do {
            let owner = record.uid.flatMap { uid in record.gid.map { MailOwner(uid: uid, gid: $0) } }
            let opening = ContinuousClock.now
            var maildrop = try await self.maildrops.openMaildrop(user: record.name, path: path, owner: owner)
            self.metrics.storage(.open, since: opening)
            if let expireDays {
                maildrop = try await self.expire(maildrop, user: record.name, days: expireDays, path: path, owner: owner)
            }
            self.maildrop = maildrop
            self.logger[metadataKey: "user"] = "\(logEscaped(record.name))"
            self.record.loggedIn(user: record.name)
            await self.loginDelay.recordLoginShared(record.name)
            self.logger.info("logged in", metadata: ["messages": "\(maildrop.messages.count)"])
            self.countLogin("success")
            if maildrop.messages.count > self.session.configuration.maximumMessages {
                self.logger.notice(
                    "maildrop over limits.maildrop_messages: this session lists the oldest ones only",
                    metadata: ["messages": "\(maildrop.messages.count)", "listed": "\(self.session.configuration.maximumMessages)"]
                )
            }
            connection.channel.pipeline.fireUserInboundEventTriggered(SessionAuthenticatedEvent())
            return self.session.loginSucceeded(messages: maildrop.messages, expireDays: expireDays)
        } catch {
            return self.loginFailed(SessionFailure(opening: error), user: user)
        }
    }

    /// One SCRAM step (RFC 5802 over RFC 5034): client-first → server-first, client-final → server-final (sent as a
    /// challenge, since POP3 has no "additional data with success"), the client's empty reply → login. Every failure,
    /// whichever check it fails, is answered and counted as a wrong password.
    private mutating func saslStep(_ name: String, response: [UInt8]?, first: Bool, connection: ConnectionChannel) async -> ServerSession.Action {
        if first { self.exchange = nil }
        if let mechanism = SASLMechanism(name: name), mechanism == .oauthBearer || mechanism == .xoauth2 {
            return await self.oauthStep(mechanism, response: response, connection: connection)
        }
        guard let mechanism = SASLMechanism(name: name), mechanism.scramAlgorithm != nil else {
            // ServerConfiguration refuses mechanisms this build cannot run; nothing else reaches here.
            SessionFailure.mechanismUnavailable(name).log(self.logger, user: nil)
            return self.session.saslFailed()
        }
        guard let response else {
            // AUTH without an initial response: an empty challenge asks for client-first.
            self.exchange = .awaitingClientFirst(mechanism)
            return self.session.saslChallenge([])
        }
        let state = self.exchange ?? .awaitingClientFirst(mechanism)
        self.exchange = nil
        switch state {
        case .awaitingClientFirst(let mechanism):
            let binding = self.session.tlsActive ? self.channelBinding.withLockedValue { $0 } : nil
            let plusOffered = self.session.offeredMechanisms.contains { $0.hasSuffix("-PLUS") }
            var exchange = SCRAMServerExchange(mechanism: mechanism, channelBinding: binding, plusOffered: plusOffered)
            let rawUser: String
            do {
                rawUser = try exchange.receiveClientFirst(response)
            } catch {
                await self.failed(user: "?", credential: Self.unrepeatableCredential(), since: .now, reason: "SCRAM: \(error)")
                return self.session.saslFailed()
            }
            let user = StringPreparation.userName(rawUser)
            guard await self.loginDelayAllows(user) else {
                self.session.saslAuthenticated(user: user)
                return self.session.loginFailed(.loginDelay)
            }
            await self.waitOutPenalty()
            let started = ContinuousClock.now
            let lookup: SCRAMLookup
            do {
                lookup = try await self.verifier.scramKeys(user: user, algorithm: mechanism.scramAlgorithm!)
            } catch {
                self.session.saslAuthenticated(user: user)
                return self.loginFailed(.credentialStoreFailed("\(error)"), user: user)
            }
            let serverFirst = exchange.serverFirst(keys: lookup.keys)
            self.exchange = .awaitingClientFinal(exchange, user: user, lookup: lookup, started: started)
            return self.session.saslChallenge(serverFirst)
        case .awaitingClientFinal(var exchange, let user, let lookup, let started):
            let serverFinal: [UInt8]
            do {
                serverFinal = try exchange.receiveClientFinal(response)
            } catch {
                // A proof made with someone else's keys never verifies, so an unknown user ends here too.
                let reason = lookup.record == nil ? "unknown user or no SCRAM credentials" : "SCRAM: \(error)"
                await self.failed(user: user, credential: Self.unrepeatableCredential(), since: started, reason: reason)
                return self.session.saslFailed()
            }
            guard let record = lookup.record else { preconditionFailure("dummy SCRAM keys verified a proof") }
            self.exchange = .awaitingAcknowledgement(record)
            return self.session.saslChallenge(serverFinal)
        case .awaitingOAuthMessage, .awaitingOAuthAcknowledgement:
            preconditionFailure("an OAuth exchange state in a SCRAM step")
        case .awaitingAcknowledgement(let record):
            guard response.isEmpty else {
                await self.failed(user: record.name, credential: Self.unrepeatableCredential(), since: .now, reason: "SCRAM: data after server-final")
                return self.session.saslFailed()
            }
            self.session.saslAuthenticated(user: record.name)
            return await self.openSession(record, connection: connection)
        }
    }

    /// The credential a SASL failure counts with when there is no password or token to recognise a retry by
    /// (the penalty does not raise for the same wrong password twice): a fresh value, so every such failure counts.
    private static func unrepeatableCredential() -> String { SCRAM.makeNonce() }

    /// OAUTHBEARER (RFC 7628) and XOAUTH2: one client message with a bearer token. A refused token gets the JSON
    /// error challenge, the client's acknowledgement, then the same -ERR as a wrong password, after the same delay
    /// and penalty. The token is never logged.
    private mutating func oauthStep(_ mechanism: SASLMechanism, response: [UInt8]?, connection: ConnectionChannel) async -> ServerSession.Action {
        guard let response else {
            self.exchange = .awaitingOAuthMessage
            return self.session.saslChallenge([])
        }
        if case .awaitingOAuthAcknowledgement = self.exchange {
            self.exchange = nil
            return self.session.saslFailed()
        }
        self.exchange = nil
        guard let oauth = self.oauth else {
            // ServerConfiguration offers these mechanisms only with auth.oauth2.
            SessionFailure.mechanismUnavailable("\(mechanism) without auth.oauth2").log(self.logger, user: nil)
            return self.session.saslFailed()
        }
        await self.waitOutPenalty()
        let started = ContinuousClock.now
        func refuse(_ user: String, _ reason: String, credential: String) async -> ServerSession.Action {
            await self.failed(user: user, credential: credential, since: started, reason: "\(mechanism): \(logEscaped(reason))")
            self.exchange = .awaitingOAuthAcknowledgement
            return self.session.saslChallenge(OAuthBearerMessage.errorChallenge(mechanism: mechanism))
        }
        guard let message = OAuthBearerMessage.parse(response, mechanism: mechanism) else {
            return await refuse("?", "malformed client message", credential: Self.unrepeatableCredential())
        }
        let user: String
        switch await oauth.validate(message.token) {
        case .failure(let failure):
            return await refuse(message.user.map(StringPreparation.userName) ?? "?", failure.description, credential: message.token)
        case .success(let name):
            user = StringPreparation.userName(name)
        }
        if let named = message.user, StringPreparation.userName(named) != user {
            return await refuse(user, "the message names another user than the token", credential: message.token)
        }
        let record: UserRecord?
        do {
            record = try await self.verifier.lookup(user: user)
        } catch {
            self.session.saslAuthenticated(user: user)
            return self.loginFailed(.credentialStoreFailed("\(error)"), user: user)
        }
        guard let record else { return await refuse(user, "no such account", credential: message.token) }
        // A locked account (`!…`/`*…` in the password field) stays locked for tokens too; an empty field is an
        // OAuth-only account.
        if let first = record.passwordField.first, first == "!" || first == "*" {
            return await refuse(user, "account locked in the passwd-file", credential: message.token)
        }
        guard await self.loginDelayAllows(user) else {
            self.session.saslAuthenticated(user: user)
            return self.session.loginFailed(.loginDelay)
        }
        self.session.saslAuthenticated(user: record.name)
        return await self.openSession(record, connection: connection)
    }

    /// RETR/TOP: streams the message through the dot-stuffer with backpressure (each write waits while the
    /// channel is not writable), so memory stays bounded for any message size.
    private mutating func sendMessage(
        index: Int,
        status: StatusResponse,
        bodyLineLimit: UInt32?,
        outbound: NIOAsyncChannelOutboundWriter<POP3OutboundFrame>
    ) async throws {
        guard let maildrop = self.maildrop else { preconditionFailure("message request outside TRANSACTION") }
        let content: MessageContent
        let reading = ContinuousClock.now
        do {
            content = try await maildrop.content(ofMessageAt: index, chunkSize: Self.chunkSize)
        } catch {
            SessionFailure.messageUnavailable("message \(index + 1): \(error)").log(self.logger, user: nil)
            try await self.write(SessionFailure.messageUnavailableReply, to: outbound)
            return
        }
        var stuffer = DotStuffer(bodyLineLimit: bodyLineLimit)
        var out = ByteBuffer()
        out.reserveCapacity(Self.chunkSize + Self.chunkSize / 8)
        status.write(into: &out)
        // A failure after "+OK" ends the connection without the terminator (the error propagates), so the
        // client can never take a partial message for a whole one.
        for try await chunk in content {
            stuffer.encode(chunk, into: &out)
            if out.readableBytes >= Self.chunkSize {
                try await self.send(out, to: outbound)
                out = ByteBuffer()
                out.reserveCapacity(Self.chunkSize + Self.chunkSize / 8)
            }
            if stuffer.isComplete { break }
        }
        stuffer.finish(into: &out)
        try await self.send(out, to: outbound)
        self.metrics.storage(.read, since: reading)
        if bodyLineLimit == nil {
            // RETR: the message's octets as LIST gives them.
            let octets = index < maildrop.messages.count ? maildrop.messages[index].size : 0
            self.summary.retrievedMessages += 1
            self.summary.retrievedOctets += octets
            self.metrics.retrieved(octets: octets)
        }
    }

    /// EXPIRE at login (RFC 2449 §6.7): messages first retrieved `days` or more days ago are removed before the
    /// session lists anything, then the maildrop is opened again for the session.
    private mutating func expire(_ maildrop: any Maildrop, user: String, days: Int, path: String, owner: MailOwner?) async throws -> any Maildrop {
        let retrievalLog = self.retrievalLog
        let log: [String: Int64]
        do {
            log = try await retrievalLog.firstRetrievals(user: user)
        } catch {
            SessionFailure.retrievalLogFailed("reading (nothing expires this session): \(error)").log(self.logger, user: nil)
            return maildrop
        }
        self.expiry = (user, log)
        let expired = RetrievalLog.expired(maildrop.messages.map(\.uniqueID), log: log, days: days, now: self.now())
        guard !expired.isEmpty else { return maildrop }
        try await maildrop.commit(deleting: expired)
        self.logger.info("expired messages removed", metadata: ["expired": "\(expired.count)", "expire_days": "\(days)"])
        return try await self.maildrops.openMaildrop(user: user, path: path, owner: owner)
    }

    /// With EXPIRE on: records the first retrieval of what this session RETR'd, drops entries of messages that are
    /// gone, while the maildrop is still locked. A failure is logged: messages then expire later, never sooner.
    private func recordRetrievals(_ maildrop: any Maildrop, deleting: Set<Int>) async {
        guard let expiry = self.expiry else { return }
        let uniqueIDs = maildrop.messages.map(\.uniqueID)
        let retrieved = self.session.retrievedIndices.filter { $0 < uniqueIDs.count }.map { uniqueIDs[$0] }
        let remaining = Set(uniqueIDs.indices.filter { !deleting.contains($0) }.map { uniqueIDs[$0] })
        let updated = RetrievalLog.updated(expiry.log, retrieved: retrieved, remaining: remaining, now: self.now())
        guard updated != expiry.log else { return }
        let retrievalLog = self.retrievalLog
        do {
            try await retrievalLog.recordFirstRetrievals(updated, user: expiry.user)
        } catch {
            SessionFailure.retrievalLogFailed("writing: \(error)").log(self.logger, user: nil)
        }
    }

    private mutating func commit(deleting indices: [Int]) async -> ServerSession.Action {
        guard let maildrop = self.maildrop else { return self.session.updateFinished(success: true) }
        self.record.updating()
        await self.recordRetrievals(maildrop, deleting: Set(indices))
        do {
            let committing = ContinuousClock.now
            try await maildrop.commit(deleting: Set(indices))
            self.metrics.storage(.commit, since: committing)
            self.maildrop = nil
            let octets = indices.reduce(0) { $0 + ($1 < maildrop.messages.count ? maildrop.messages[$1].size : 0) }
            self.summary.deletedMessages = indices.count
            self.summary.deletedOctets = octets
            self.metrics.deleted(messages: indices.count, octets: octets)
            self.logger.info("logged out", metadata: ["deleted": "\(indices.count)"])
            return self.session.updateFinished(success: true)
        } catch {
            self.summary.end = .commitFailed
            SessionFailure.commitFailed("\(error)").log(self.logger, user: nil)
            await maildrop.release()
            self.maildrop = nil
            return self.session.updateFinished(success: false)
        }
    }
}

/// What one session did, for its summary line.
private struct Summary {
    var retrievedMessages = 0
    var retrievedOctets = 0
    var deletedMessages = 0
    var deletedOctets = 0
    /// Set when the session itself ended it (QUIT, bad commands, a failed UPDATE).
    var end: SessionEnd?
}

/// Where a SCRAM or OAuth exchange stands between two client lines.
private enum SASLExchangeState {
    case awaitingClientFirst(SASLMechanism)
    case awaitingClientFinal(SCRAMServerExchange, user: String, lookup: SCRAMLookup, started: ContinuousClock.Instant)
    /// Server-final sent as a challenge; the client answers with an empty line.
    case awaitingAcknowledgement(UserRecord)
    /// OAUTHBEARER/XOAUTH2 without an initial response: the next line is the client message.
    case awaitingOAuthMessage
    /// The error challenge was sent; the client's answer ends the exchange with -ERR.
    case awaitingOAuthAcknowledgement
}
