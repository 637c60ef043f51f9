import Foundation
import Logging
import MailRetriever
import NIOCore
import POP3Client

/// What one account's fetch did.
struct FetchSummary: Sendable, Codable {
    var account: String
    var fetched = 0
    var bytes = 0
    var skipped = 0
    var deleted = 0
    var onServer = 0
    var error: String?
}

/// Everything a fetch needs for one account, whether from the command line or the accounts file.
struct FetchJob: Sendable {
    var name: String
    var url: POP3URL
    var password: PasswordSource
    var trust: TrustPolicy
    var security: ConnectionSecurity
    var destination: DestinationSpec
    var retention: RetentionPolicy
    var maximumSize: Int?
    /// At most this many messages per session (then QUIT and a new session); nil: all in one.
    var checkpoint: Int? = nil
    /// Seconds for connect, handshake and each reply.
    var timeout: Int

    enum DestinationSpec: Sendable {
        case maildir(String), mbox(String), mda(String)
    }
}

/// Downloads one account. Never deletes a message on the server whose local copy is not durable: a UID is
/// DELE'd only when the journal says it was delivered, and the journal says so only after the destination's
/// commit (fsync of the file) and flush (fsync of the directory) returned.
struct Fetcher {
    let job: FetchJob
    let eventLoop: any EventLoop
    let logger: Logger
    let progress: Progress?

    func run() async -> FetchSummary {
        var summary = FetchSummary(account: self.job.name)
        do {
            try await self.fetch(&summary)
        } catch {
            summary.error = "\(error)"
        }
        return summary
    }

    private func fetch(_ summary: inout FetchSummary) async throws {
        let key = AccountKey(user: self.job.url.user, host: self.job.url.host, port: self.job.url.port)
        let stateDirectory = try StatePaths.directory()
        let lock = try AccountLock.acquire(key, stateDirectory: stateDirectory)
        defer { lock.release() }
        let journal = try UIDLJournal.open(key, stateDirectory: stateDirectory)
        let destination: any MessageDestination
        switch self.job.destination {
        case .maildir(let path): destination = MaildirDestination(path: path, accountKey: key)
        case .mbox(let path): destination = MboxDestination(path: path, accountKey: key)
        case .mda(let command): destination = MDADestination(command: command)
        }
        try destination.recover(journal: journal)
        let password = try self.job.password.readPassword()

        var configuration = POP3ClientConfiguration(
            host: self.job.url.host,
            port: self.job.url.port,
            security: self.job.security,
            trust: self.job.trust
        )
        configuration.localAddress = ProcessInfo.processInfo.environment["POP3_BIND_ADDRESS"]
        configuration.eventLoopGroup = self.eventLoop
        configuration.connectTimeout = .seconds(Int64(self.job.timeout))
        configuration.replyTimeout = .seconds(Int64(self.job.timeout))
        // With --checkpoint N, each session fetches at most N messages and ends with QUIT, so that deletions
        // become final on the server even when the link drops later (security.md case 102).
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
            try await connection.login(user: self.job.url.user, password: password)
            let uidl = try await connection.uidl()
            let sizes = try await connection.list()
            if first { summary.onServer = uidl.count }
            let now = currentTime()
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
            var bound = MessageBound(announced: 0, timeout: self.job.timeout)
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
                        sink = try destination.begin(uid: uidOf[number]!)
                        bound = MessageBound(announced: sizes[number] ?? 0, timeout: self.job.timeout)
                    },
                    chunk: { number, chunk in
                        try bound.receive(chunk.readableBytes, message: number)
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
/// (security.md cases 93 and 107): at most the announced size plus a margin, and a deadline that allows at
/// least 4 KB/s on top of the reply timeout. Exceeding either aborts the fetch; nothing of that message is stored
/// or deleted.
struct MessageBound {
    static let minimumRate = 4_096
    let announced: Int
    let limit: Int
    let deadline: ContinuousClock.Instant
    private(set) var received = 0

    init(announced: Int, timeout: Int) {
        self.announced = announced
        // Some servers announce LF-counted sizes and send CRLF: allow a quarter more, plus 64 KiB.
        self.limit = announced + announced / 4 + 64 * 1024
        self.deadline = .now + .seconds(timeout + announced / Self.minimumRate)
    }

    mutating func receive(_ count: Int, message: Int) throws {
        self.received += count
        guard self.received <= self.limit else {
            throw POP3ClientError.protocolViolation("message \(message) is longer than the \(self.announced) octets LIST announced")
        }
        guard ContinuousClock.now <= self.deadline else {
            throw POP3ClientError.protocolViolation("message \(message) arrives too slowly (\(self.received) of \(self.announced) octets)")
        }
    }
}

/// A progress line on a terminal (messages and bytes), nothing otherwise.
final class Progress: @unchecked Sendable {
    // @unchecked: updated from one fetch task at a time per instance; output goes through a lock.
    private let lock = NSLock()
    private var account = ""
    private var messages = 0
    private var done = 0
    private var bytes = 0
    private var received = 0
    private var lastDraw = Date.distantPast

    static func forTerminal() -> Progress? { isatty(STDERR_FILENO) == 1 ? Progress() : nil }

    func start(account: String, messages: Int, bytes: Int) {
        self.lock.withLock {
            self.account = account
            self.messages = messages
            self.bytes = bytes
            self.done = 0
            self.received = 0
        }
        self.draw(force: true)
    }

    func advance(bytes: Int) {
        self.lock.withLock { self.received += bytes }
        self.draw(force: false)
    }

    func messageDone() {
        self.lock.withLock { self.done += 1 }
        self.draw(force: false)
    }

    func finish() {
        self.draw(force: true)
        FileHandle.standardError.write(Data("\n".utf8))
    }

    private func draw(force: Bool) {
        self.lock.withLock {
            let now = Date()
            guard force || now.timeIntervalSince(self.lastDraw) > 0.1 else { return }
            self.lastDraw = now
            let fraction = self.bytes > 0 ? min(1, Double(self.received) / Double(self.bytes)) : 1
            let width = 24
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
            let line = String(format: "\r%@ [%@] %d/%d messages, %.1f/%.1f MB", self.account, bar, self.done, self.messages,
                              Double(self.received) / 1e6, Double(self.bytes) / 1e6)
            FileHandle.standardError.write(Data(line.utf8))
        }
    }
}
