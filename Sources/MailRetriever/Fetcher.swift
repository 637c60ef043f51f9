import Foundation
import Logging
import NIOCore
import POP3Client
import POP3NIO

/// What one account's fetch did.
public struct FetchSummary: Sendable, Codable, Equatable {
    public var account: String
    public var fetched = 0
    public var bytes = 0
    public var skipped = 0
    public var deleted = 0
    public var onServer = 0
    /// What failed, for the user (nil when the fetch succeeded).
    public var error: String?
    /// The run was stopped between two messages (SIGTERM to `pop3 fetch --daemon`); nothing was lost.
    public var stopped: Bool?
    /// The TLS version and cipher suite of the (last) session, nil without TLS.
    public var tls: String?
    public var cipher: String?
    /// The login mechanism used: `user`, `plain`, `scram-sha-256-plus`, `oauthbearer`, …
    public var mechanism: String?
    /// Wall time of the whole run for this account, seconds.
    public var seconds: Double?
    /// The failure's kind (`FetchFailure.Kind`): a bounded label for scripts, logs and metrics.
    public var failure: FetchFailure.Kind?
    /// Whether a later run may succeed without any change (`FetchFailure.isTemporary`).
    public var temporary: Bool?

    public init(account: String) {
        self.account = account
    }
}

/// Thrown before a message when a stop was asked for.
struct FetchStopped: Error {}

/// The clocks a fetch reads, passed in so that tests move them: wall-clock Unix seconds for the journal's
/// first-seen times and `keep_days`, monotonic time for each message's download deadline.
public struct FetchClock: Sendable {
    public var unixSeconds: @Sendable () -> Int64
    public var monotonic: @Sendable () -> ContinuousClock.Instant

    public init(unixSeconds: @escaping @Sendable () -> Int64, monotonic: @escaping @Sendable () -> ContinuousClock.Instant) {
        self.unixSeconds = unixSeconds
        self.monotonic = monotonic
    }

    /// The system clocks; `POP3_NOW` (see `currentTime`) moves the wall clock for tests of the command line.
    public static let system = FetchClock(unixSeconds: { currentTime() }, monotonic: { .now })
}

/// Progress of one account's download (a terminal progress line in `pop3 fetch`).
public protocol FetchProgress: Sendable {
    func start(account: String, messages: Int, bytes: Int)
    func advance(bytes: Int)
    func messageDone()
    func finish()
}

/// Where fetched messages go.
public enum LocalDestination: Sendable, Equatable {
    case maildir(String)
    /// An mbox file, written as mboxrd.
    case mbox(String)
    /// A shell command run through `/bin/sh -c` with the message on stdin (at least once: see `MDADestination`).
    case mda(String)
    /// The site's MTA over LMTP or SMTP: a message is DELE'd only after the MTA's 250 for it (`MTADestination`).
    case mta(MTATarget)

    /// The envelope recipient for `lmtp:`/`smtp:` when none is given: the name of the user running pop3.
    public static func defaultRecipient() -> String {
        if let entry = getpwuid(getuid()), let name = entry.pointee.pw_name { return String(cString: name) }
        return ProcessInfo.processInfo.environment["USER"] ?? "root"
    }
}

/// A fetch that cannot be set up as asked (conflicting or missing options); says which.
public struct FetchSetupError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension POP3URL {
    /// The connection security this URL and the flags ask for: `pop3s://` is implicit TLS; `pop3://` needs STLS
    /// or, knowingly, no TLS at all (never a fallback).
    public func security(starttls: Bool, insecurePlaintext: Bool) throws(FetchSetupError) -> ConnectionSecurity {
        switch self.scheme {
        case .pop3s:
            if starttls { throw FetchSetupError("--starttls goes with pop3:// URLs, not pop3s://") }
            if insecurePlaintext { throw FetchSetupError("--insecure-plaintext goes with pop3:// URLs") }
            return .implicitTLS
        case .pop3:
            if starttls && insecurePlaintext { throw FetchSetupError("--starttls and --insecure-plaintext exclude each other") }
            if starttls { return .startTLS }
            if insecurePlaintext { return .insecurePlaintext }
            throw FetchSetupError("pop3:// needs --starttls (or, knowingly, --insecure-plaintext)")
        }
    }
}

/// Everything a fetch needs for one account, whether from the command line or the accounts file.
public struct FetchJob: Sendable {
    public var name: String
    public var url: POP3URL
    public var password: PasswordSource
    public var trust: TrustPolicy
    public var security: ConnectionSecurity
    public var destination: LocalDestination
    public var retention: RetentionPolicy
    public var maximumSize: Int?
    /// At most this many messages per session (then QUIT and a new session); nil: all in one.
    public var checkpoint: Int?
    /// Seconds for connect, handshake and each reply.
    public var timeout: Int
    /// The local address to connect from (`POP3_BIND_ADDRESS` in `pop3 fetch`), nil for any.
    public var localAddress: String?
    /// Seconds between polls under `pop3 fetch --daemon` (the account's `interval:`); nil: the daemon's.
    public var interval: Int?
    /// How to log in (`--auth`, `auth:`, a URL's `;AUTH=`); `auto` by default.
    public var authentication: AuthenticationMethod
    /// With a provider (`provider:` in the accounts file): tokens from `pop3 oauth2 login`, refreshed here.
    public var oauth2: OAuth2Provider?

    public init(
        name: String,
        url: POP3URL,
        password: PasswordSource,
        trust: TrustPolicy,
        security: ConnectionSecurity,
        destination: LocalDestination,
        retention: RetentionPolicy,
        maximumSize: Int? = nil,
        checkpoint: Int? = nil,
        timeout: Int = 60,
        localAddress: String? = nil,
        authentication: AuthenticationMethod = .auto
    ) {
        self.authentication = authentication
        self.name = name
        self.url = url
        self.password = password
        self.trust = trust
        self.security = security
        self.destination = destination
        self.retention = retention
        self.maximumSize = maximumSize
        self.checkpoint = checkpoint
        self.timeout = timeout
        self.localAddress = localAddress
    }

    /// The job for an account of the accounts file; options given on the command line win over the file's.
    public init(
        account: AccountConfiguration,
        retention: RetentionPolicy? = nil,
        maximumSize: Int? = nil,
        checkpoint: Int? = nil,
        timeout: Int = 60,
        localAddress: String? = nil,
        authentication: AuthenticationMethod? = nil
    ) throws(FetchSetupError) {
        self.init(
            name: account.name,
            url: account.url,
            password: account.passwordSource,
            trust: account.trust,
            security: try account.url.security(starttls: account.starttls, insecurePlaintext: account.insecurePlaintext),
            destination: account.destination,
            retention: retention ?? account.retention,
            maximumSize: maximumSize ?? account.maxSize,
            checkpoint: checkpoint,
            timeout: timeout,
            localAddress: localAddress,
            authentication: authentication ?? account.authentication
        )
        self.oauth2 = account.oauth2
        self.interval = account.interval
    }
}

/// Downloads one account. Never deletes a message on the server whose local copy is not durable: a UID is
/// DELE'd only when the journal says it was delivered, and the journal says so only after the destination's
/// flush returned (for a Maildir: every committed file's fsync succeeded, then the directory's).
public struct Fetcher: Sendable {
    let job: FetchJob
    let eventLoop: any EventLoop
    let logger: Logger
    let progress: (any FetchProgress)?
    let clock: FetchClock
    /// Where the UIDL journal and the account lock live.
    let stateDirectory: String
    /// Asked before each message: true ends the run after the message in flight (`pop3 fetch --daemon` at SIGTERM).
    let stopRequested: @Sendable () -> Bool

    public init(
        job: FetchJob,
        stateDirectory: String,
        eventLoop: any EventLoop,
        clock: FetchClock = .system,
        logger: Logger,
        progress: (any FetchProgress)? = nil,
        stopRequested: @escaping @Sendable () -> Bool = { false }
    ) {
        self.stopRequested = stopRequested
        self.job = job
        self.stateDirectory = stateDirectory
        self.eventLoop = eventLoop
        self.clock = clock
        self.logger = logger
        self.progress = progress
    }

    public func run() async -> FetchSummary {
        var summary = FetchSummary(account: self.job.name)
        let started = self.clock.monotonic()
        do {
            try await self.fetch(&summary)
        } catch is FetchStopped {
            // Stopped between two messages: what was fetched is stored and journaled; the server deletes nothing
            // this time (its DELEs wait for the next run).
            summary.stopped = true
        } catch {
            let failure = FetchFailure(error)
            summary.error = failure.message
            summary.failure = failure.kind
            summary.temporary = failure.isTemporary
            self.logger.debug("fetch failed", metadata: ["account": "\(self.job.name)", "failure": "\(failure.kind.rawValue)"])
        }
        let elapsed = self.clock.monotonic() - started
        summary.seconds = ((Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18) * 1000).rounded() / 1000
        return summary
    }

    private func fetch(_ summary: inout FetchSummary) async throws {
        let key = AccountKey(user: self.job.url.user, host: self.job.url.host, port: self.job.url.port)
        let stateDirectory = self.stateDirectory
        let lock = try AccountLock.acquire(key, stateDirectory: stateDirectory)
        defer { lock.release() }
        let journal = try UIDLJournal.open(key, stateDirectory: stateDirectory)
        let destination: any MessageDestination
        switch self.job.destination {
        case .maildir(let path): destination = MaildirDestination(path: path, accountKey: key)
        case .mbox(let path): destination = MboxDestination(path: path, accountKey: key)
        case .mda(let command): destination = MDADestination(command: command)
        case .mta(let target): destination = MTADestination(target: target)
        }
        try destination.recover(journal: journal)
        // With OAuth the source gives an access token (oauth2_token_command, or the provider's tokens, refreshed
        // when needed), got once per run.
        if self.job.authentication.usesBearerToken, self.job.password == .prompt, self.job.oauth2 == nil {
            throw FetchSetupError(
                "--auth \(self.job.authentication) needs an access token: provider: (and pop3 oauth2 login) or oauth2_token_command in the accounts file, or --oauth2-token-command"
            )
        }
        let password: String
        if let provider = self.job.oauth2 {
            password = try await self.accessToken(provider, key: key)
        } else {
            password = try self.job.password.readPassword()
        }

        var configuration = POP3ClientConfiguration(
            host: self.job.url.host,
            port: self.job.url.port,
            security: self.job.security,
            trust: self.job.trust
        )
        configuration.localAddress = self.job.localAddress
        configuration.authentication = self.job.authentication
        configuration.eventLoopGroup = self.eventLoop
        configuration.connectTimeout = .seconds(Int64(self.job.timeout))
        configuration.replyTimeout = .seconds(Int64(self.job.timeout))
        // With --checkpoint N, each session fetches at most N messages and ends with QUIT, so that deletions
        // become final on the server even when the link drops later (docs/security-cases.md case 102).
        var skipped = Set<String>()
        var sessions = 0
        while try await self.session(
            configuration, password: password, journal: journal, destination: destination,
            first: sessions == 0, skipped: &skipped, summary: &summary
        ) {
            sessions += 1
            // A server that keeps listing new messages cannot keep us here: as many sessions as the first
            // listing needs, and one more.
            if let limit = self.job.checkpoint, sessions > summary.onServer / limit + 1 {
                FileHandle.standardError.write(Data(
                    "pop3: \(self.job.name): stopping after \(sessions) --checkpoint sessions (the server keeps listing new messages); the rest waits for the next run\n".utf8
                ))
                break
            }
        }
    }

    /// The stored access token while it is valid for another minute, else one refresh (the new tokens saved first).
    private func accessToken(_ provider: OAuth2Provider, key: AccountKey) async throws -> String {
        let now = self.clock.unixSeconds()
        guard let tokens = try OAuth2Tokens.load(key, stateDirectory: self.stateDirectory) else {
            throw OAuth2Error.notLoggedIn(account: self.job.name)
        }
        if let token = tokens.usableAccessToken(now: now) { return token }
        guard let refreshToken = tokens.refreshToken else { throw OAuth2Error.notLoggedIn(account: self.job.name) }
        self.logger.debug("refreshing the OAuth 2.0 access token", metadata: ["provider": "\(provider.name)"])
        let fresh = try await OAuth2Flows(provider: provider, say: { _ in }).refresh(refreshToken, account: self.job.name, now: now)
        try fresh.save(key, stateDirectory: self.stateDirectory)
        guard let token = fresh.accessToken else { throw OAuth2Error.server("no access token") }
        return token
    }

    /// One connection: logs in, fetches what is not yet delivered (at most `job.checkpoint` messages), deletes what
    /// the retention policy says, QUITs. Returns whether messages were left to fetch for another session.
    private func session(
        _ configuration: POP3ClientConfiguration,
        password: String,
        journal: UIDLJournal,
        destination: any MessageDestination,
        first: Bool,
        skipped: inout Set<String>,
        summary: inout FetchSummary
    ) async throws -> Bool {
        let connection = try await POP3Connection.connect(configuration, logger: self.logger)
        do {
            if self.job.authentication.usesBearerToken {
                try await connection.login(user: self.job.url.user, bearerToken: password)
            } else {
                try await connection.login(user: self.job.url.user, password: password)
            }
            if let tls = connection.tls {
                summary.tls = tls.version
                summary.cipher = tls.cipherSuite.map(TLSCipherSuite.name)
            }
            summary.mechanism = (self.job.authentication.usesBearerToken ? self.job.authentication : connection.resolve(self.job.authentication))?.rawValue
            let uidl = try await connection.uidl()
            let sizes = try await connection.list()
            if first { summary.onServer = uidl.count }
            let now = self.clock.unixSeconds()
            try journal.noteSeen(uidl.map(\.uid), now: now)

            var uidOf: [Int: String] = [:]
            var toFetch: [Int] = []
            var totalBytes = 0
            for (number, uid) in uidl {
                uidOf[number] = uid
                if journal.entry(for: uid)?.delivered == true || destination.isStored(uid: uid) {
                    if journal.entry(for: uid)?.delivered != true { try journal.markDelivered(uid) }
                    continue
                }
                let size = sizes[number] ?? 0
                if let maximum = self.job.maximumSize, size > maximum {
                    if skipped.insert(uid).inserted {
                        summary.skipped += 1
                        FileHandle.standardError.write(Data("pop3: \(self.job.name): skipping message \(number) (\(size) octets > --max-size \(maximum))\n".utf8))
                    }
                    continue
                }
                toFetch.append(number)
                totalBytes += size
            }
            var more = false
            if let limit = self.job.checkpoint, toFetch.count > limit {
                toFetch = Array(toFetch.prefix(limit))
                totalBytes = toFetch.reduce(0) { $0 + (sizes[$1] ?? 0) }
                more = true
            }
            self.progress?.start(account: self.job.name, messages: toFetch.count, bytes: totalBytes)

            var sink: (any MessageSink)?
            var bound = MessageBound(announced: 0, timeout: self.job.timeout, now: self.clock.monotonic())
            // Committed but not yet journaled: made durable as a whole, then journaled, in batches of the
            // destination's `commitBatchLimit` (a Maildir: one directory and one journal fsync per 32 messages).
            // Deletions come only after the last batch.
            var committed: [String] = []
            func settle() throws {
                guard !committed.isEmpty else { return }
                try destination.flush()
                try journal.markDelivered(committed)
                committed = []
            }
            do {
                try await connection.retrieve(
                    toFetch,
                    begin: { number in
                        if self.stopRequested() { throw FetchStopped() }
                        sink = try destination.begin(uid: uidOf[number]!)
                        bound = MessageBound(announced: sizes[number] ?? 0, timeout: self.job.timeout, now: self.clock.monotonic())
                    },
                    chunk: { number, chunk in
                        try bound.receive(chunk.readableBytes, message: number, now: self.clock.monotonic())
                        try sink!.write(chunk)
                        summary.bytes += chunk.readableBytes
                        self.progress?.advance(bytes: chunk.readableBytes)
                    },
                    end: { number in
                        try sink!.commit()
                        sink = nil
                        committed.append(uidOf[number]!)
                        summary.fetched += 1
                        self.progress?.messageDone()
                        if committed.count >= destination.commitBatchLimit { try settle() }
                    }
                )
                try settle()
            } catch {
                sink?.abort()
                // What was stored stays stored; if this fails, the next run's recover() finds it by name.
                try? settle()
                throw error
            }
            self.progress?.finish()

            // Deletions: only delivered messages, and only as the retention policy says.
            let deletable = uidl.filter { _, uid in
                guard let entry = journal.entry(for: uid), entry.delivered else { return false }
                return shouldDelete(entry: entry, now: now, policy: self.job.retention)
            }
            try await connection.delete(deletable.map(\.number))
            try await connection.quit()
            summary.deleted += deletable.count
            // QUIT answered +OK: the server committed. Forget what is no longer there.
            let remaining = Set(uidl.map(\.uid)).subtracting(deletable.map(\.uid))
            try journal.forget(keepingOnly: remaining)
            try journal.compact()
            return more
        } catch {
            await connection.close()
            throw error
        }
    }
}

/// Bounds one message's download by what LIST announced, against a lying or endless body and a slow drip
/// (docs/security-cases.md cases 93 and 107): at most the announced size plus a margin, and a deadline that allows at
/// least 4 KB/s on top of the reply timeout. Exceeding either aborts the fetch; nothing of that message is stored
/// or deleted.
public struct MessageBound: Sendable {
    public static let minimumRate = 4_096
    public let announced: Int
    public let limit: Int
    public let deadline: ContinuousClock.Instant
    public private(set) var received = 0

    public init(announced: Int, timeout: Int, now: ContinuousClock.Instant) {
        self.announced = announced
        // Some servers announce LF-counted sizes and send CRLF: allow a quarter more, plus 64 KiB.
        self.limit = announced + announced / 4 + 64 * 1024
        self.deadline = now + .seconds(timeout + announced / Self.minimumRate)
    }

    public mutating func receive(_ count: Int, message: Int, now: ContinuousClock.Instant) throws {
        self.received += count
        guard self.received <= self.limit else {
            throw POP3ClientError.protocolViolation("message \(message) is longer than the \(self.announced) octets LIST announced")
        }
        guard now <= self.deadline else {
            throw POP3ClientError.protocolViolation("message \(message) arrives too slowly (\(self.received) of \(self.announced) octets)")
        }
    }
}

