import Foundation
import LMTPCore
import Logging
import NIOCore
import NIOPosix
import MailStore
import POP3Core
import SystemIO

#if canImport(Glibc)
import Glibc
#endif

/// One LMTP connection: reads what the client sends through `LMTPInputFramer`, feeds `LMTPSession`, carries out
/// its actions (look up, spool, deliver) and writes the replies, flushing when no pipelined input is waiting.
struct LMTPConnection {
    let service: LMTPService
    let logger: Logger
    let session: UInt64
    let peer: SocketAddress?
    let id: ObjectIdentifier
    private var state: LMTPSession
    private var framer = LMTPInputFramer()
    private var spool: LMTPSpool?
    private var discarding = false
    private var chunkOctets = 0
    private var out = ByteBuffer()

    init(service: LMTPService, logger: Logger, session: UInt64, peer: SocketAddress?, id: ObjectIdentifier) {
        self.id = id
        self.service = service
        self.logger = logger
        self.session = session
        self.peer = peer
        let lmtp = service.configuration.lmtp
        self.state = LMTPSession(
            configuration: .init(
                hostname: service.hostname,
                maximumMessageSize: service.configuration.limits.messageSize,
                maximumRecipients: lmtp.maximumRecipients,
                maximumBadCommands: lmtp.maximumBadCommands
            )
        )
    }

    mutating func run(inbound: NIOAsyncChannelInboundStream<ByteBuffer>, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async throws {
        defer { self.spool?.close() }
        self.state.greeting.write(into: &self.out)
        try await self.flush(outbound)
        if self.service.connection(self.id, isIdle: true) {
            LMTPReply.shuttingDown.write(into: &self.out)
            try await self.flush(outbound)
            return
        }
        for try await bytes in inbound {
            self.framer.append(bytes)
            while let frame = self.framer.next() {
                var actions: [LMTPSession.Action]
                switch frame {
                case .line(let line):
                    actions = self.state.receive(line: line.readableBytesView)
                case .lineTooLong:
                    actions = self.state.lineTooLong()
                case .content(let piece):
                    self.chunkOctets += piece.readableBytes
                    if !self.discarding { await self.spool?.append(piece) }
                    continue
                case .endOfContent:
                    let octets = self.chunkOctets
                    self.chunkOctets = 0
                    var tooLarge = false
                    if !self.discarding, var spool = self.spool {
                        await spool.endOfChunk()
                        tooLarge = spool.tooLarge
                        self.spool = spool
                    }
                    self.discarding = false
                    actions = self.state.contentEnded(octets: octets, tooLarge: tooLarge)
                    if !self.state.hasOpenTransaction {
                        // Ended without a delivery: too large, or a refused chunk.
                        if tooLarge {
                            self.logger.notice("message refused: over limits.message_size", metadata: ["limit": "\(self.service.configuration.limits.messageSize)"])
                        }
                        self.spool?.close()
                        self.spool = nil
                    }
                }
                if try await self.perform(actions, outbound) == false { return }
            }
            if self.out.readableBytes > 0 { try await self.flush(outbound) }
            let idle = self.state.acceptsCommands && !self.state.hasOpenTransaction && !self.framer.hasBufferedInput
            if self.service.connection(self.id, isIdle: idle), idle {
                LMTPReply.shuttingDown.write(into: &self.out)
                try await self.flush(outbound)
                return
            }
        }
        // The client went away: a transaction not yet complete stores nothing (the spool is unnamed, and closing
        // it frees it).
        if self.spool != nil { self.logger.info("connection closed before the end of the message: nothing stored") }
    }

    /// Carries out the session's actions; false once the connection is to close.
    private mutating func perform(_ actions: [LMTPSession.Action], _ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async throws -> Bool {
        var queue = actions[...]
        while let action = queue.popFirst() {
            switch action {
            case .reply(let reply):
                reply.write(into: &self.out)
            case .lookUp(let address):
                let lookup = await self.lookUp(address)
                queue.append(contentsOf: self.state.recipientLookedUp(lookup))
            case .receiveData:
                try self.openSpool()
                self.framer.startData()
            case .receiveChunk(let size, let discard):
                self.discarding = discard
                if !discard, self.spool == nil { try self.openSpool() }
                self.framer.startChunk(size: size)
            case .deliver(let transaction):
                // The replies so far go out first: the client may wait for them before it reads ours.
                try await self.flush(outbound)
                let replies = await self.deliver(transaction)
                queue.append(contentsOf: self.state.delivered(replies))
            case .close:
                try await self.flush(outbound)
                return false
            }
        }
        return true
    }

    private func lookUp(_ address: String) async -> LMTPSession.RecipientLookup {
        do {
            guard let account = try await self.service.resolve(address) else {
                self.logger.info("unknown recipient", metadata: ["recipient": "\(logEscaped(address))"])
                return .unknown
            }
            return .found(account)
        } catch {
            // The account store did not answer (a database away): deferred, so the MTA retries.
            self.logger.error("recipient lookup failed", metadata: ["recipient": "\(logEscaped(address))", "error": "\(error)"])
            return .temporaryFailure
        }
    }

    private mutating func openSpool() throws {
        self.spool?.close()
        self.spool = nil
        do {
            self.spool = try LMTPSpool(maximumSize: self.service.configuration.limits.messageSize)
        } catch {
            self.logger.error("cannot create the LMTP spool file", metadata: ["error": "\(error)"])
            self.spool = LMTPSpool(failed: "\(error)")
        }
    }

    private mutating func deliver(_ transaction: LMTPSession.Transaction) async -> [LMTPReply] {
        guard let spool = self.spool else { return transaction.recipients.map { _ in .localError } }
        defer {
            spool.close()
            self.spool = nil
        }
        if let failure = spool.failure {
            self.logger.error("message not stored: the spool failed", metadata: ["error": "\(failure)"])
            return transaction.recipients.map { _ in .localError }
        }
        var replies: [LMTPReply] = []
        var byAddress: [String: LMTPReply] = [:]
        for recipient in transaction.recipients {
            // The same address twice gets the same reply and one copy (RFC 2033 §4.2 wants a reply for each).
            let key = recipient.address.lowercased()
            if let earlier = byAddress[key] {
                replies.append(earlier)
                continue
            }
            let storing = ContinuousClock.now
            let reply = await self.service.deliver(
                recipient, transaction: transaction, spool: spool, session: self.session, peer: self.peer, logger: self.logger
            )
            self.service.metrics.storage(.deliver, since: storing)
            self.service.metrics.delivery(via: "lmtp", result: reply.code < 300 ? "delivered" : reply.code < 500 ? "tempfail" : "rejected")
            byAddress[key] = reply
            replies.append(reply)
        }
        return replies
    }

    private mutating func flush(_ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async throws {
        guard self.out.readableBytes > 0 else { return }
        let bytes = self.out
        self.out = ByteBuffer()
        try await outbound.write(bytes)
    }
}

/// The message of one transaction, spooled to an unnamed temporary file as it arrives (CRLF stored as LF), so
/// that memory stays bounded at any size and every recipient's copy is read from it with pread(2).
struct LMTPSpool {
    private(set) var descriptor: Int32
    /// Octets in the spool (after CRLF → LF).
    private(set) var size = 0
    /// Octets received (as sent), checked against the limit.
    private(set) var received = 0
    private(set) var tooLarge = false
    private(set) var failure: String?
    private let maximumSize: Int
    private var pending = ByteBuffer()
    private var normalizer = LineEndingNormalizer()
    /// Spool writes are batched to this size and done off the event loop.
    static let batchSize = 256 * 1024

    init(maximumSize: Int) throws {
        self.maximumSize = maximumSize
        self.descriptor = try FileSystem.openUnnamedTemporaryFile()
    }

    /// A spool that could not be created: the transaction is read to its end, then every recipient gets 451.
    init(failed reason: String) {
        self.maximumSize = 0
        self.descriptor = -1
        self.failure = reason
    }

    mutating func append(_ piece: ByteBuffer) async {
        self.received += piece.readableBytes
        guard !self.tooLarge, self.failure == nil else { return }
        if self.received > self.maximumSize {
            self.tooLarge = true
            self.pending.clear()
            return
        }
        self.normalizer.normalize(piece, into: &self.pending)
        if self.pending.readableBytes >= Self.batchSize { await self.writePending() }
    }

    /// The end of DATA or of a BDAT chunk: everything received is in the file.
    mutating func endOfChunk() async {
        guard !self.tooLarge, self.failure == nil else { return }
        self.normalizer.finish(into: &self.pending)
        await self.writePending()
    }

    private mutating func writePending() async {
        guard self.pending.readableBytes > 0, self.failure == nil else { return }
        let bytes = self.pending
        let fd = self.descriptor
        self.pending = ByteBuffer()
        do {
            try await NIOThreadPool.singleton.runIfActive {
                try bytes.withUnsafeReadableBytes { raw in
                    try Result { () throws(FileSystemError) in try FileSystem.write(fd, raw, path: "<lmtp spool>") }.get()
                }
            }
            self.size += bytes.readableBytes
        } catch {
            self.failure = "\(error)"
        }
    }

    func close() {
        if self.descriptor >= 0 { FileSystem.close(self.descriptor) }
    }
}

/// The lines each stored copy starts with: `Return-Path:`, `Delivered-To:` (this copy's recipient, always, even
/// with several) and `Received:` (RFC 5321 §4.4), with LF endings as the spool.
struct LMTPTraceHeaders {
    var sender: String
    var recipient: String
    var clientName: String
    var clientAddress: SocketAddress?
    var hostname: String
    var id: String
    var utf8: Bool
    var date: Date

    var bytes: [UInt8] {
        let from: String
        switch self.clientAddress {
        case .v4: from = "\(self.clientName) ([\(self.clientAddress?.ipAddress ?? "")])"
        case .v6: from = "\(self.clientName) ([IPv6:\(self.clientAddress?.ipAddress ?? "")])"
        default: from = self.clientName
        }
        let text = """
            Return-Path: <\(self.sender)>
            Delivered-To: <\(self.recipient)>
            Received: from \(from)
            \tby \(self.hostname) (swift-pop3) with \(self.utf8 ? "UTF8LMTP" : "LMTP") id \(self.id)
            \tfor <\(self.recipient)>; \(Self.rfc5322(self.date))

            """
        return Array(text.utf8)
    }

    /// `Sun, 06 Dec 2026 23:55:41 +0000`, in the C locale whatever the process's.
    static func rfc5322(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) "
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) +0000"
    }
}
