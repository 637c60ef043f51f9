import CPrivSep
import Logging
import MailStore
import NIOCore
import NIOPosix
import POP3Core
import Synchronization
import SystemIO

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Privilege separation for mail files: a maildrop opened in a separate process that runs with the account's
/// uid/gid (Dovecot does the same with a mail process per user).
///
/// pop3d (an unprivileged user after binding) asks its privileged helper for a worker; the helper checks the
/// account against the passwd-file, starts `pop3d mail-worker` as the account's uid/gid and hands pop3d one end of
/// a socket pair. pop3d then drives the worker through `WorkerMaildrop`; the worker serves exactly one maildrop
/// session (`serve`) and exits when it is committed or released, or when pop3d goes away.
public enum MaildropWorker {
    /// How long pop3d waits for a worker's reply before the session gets `-ERR [SYS/TEMP]`.
    public static let replyTimeoutSeconds = 120

    /// The worker's side: serves one maildrop session on `socket` until commit, release, or end of stream (which
    /// releases the lock). Returns whether the session ended cleanly.
    public static func serve(socket: Int32, provider: MaildirProvider, logger: Logger) async -> Bool {
        let channel = WorkerChannel(socket: socket)
        defer { channel.close() }
        let pool = provider.threadPool
        var maildrop: MaildirMaildrop?
        func reply(_ message: WorkerMessage, attaching descriptor: Int32 = -1) async throws {
            try await pool.runIfActive { try channel.send(message, attaching: descriptor) }
        }
        do {
            while true {
                let (request, attached) = try await pool.runIfActive { try channel.receive() }
                if case .deliver(let user, let path, let quota, let maximumSize, let prefix, let size) = request, maildrop == nil {
                    guard let spool = attached else { throw WorkerChannelError.malformed("deliver without its spool file") }
                    defer { _ = Glibc.close(spool) }
                    let result: WorkerMessage = await Self.deliver(
                        .spool(prefix: prefix, descriptor: spool, size: size), path: path, user: user, quota: quota,
                        maximumSize: maximumSize, pool: pool
                    )
                    try await reply(result)
                    return true
                }
                switch (request, maildrop) {
                case (.open(let user, let path, let maximumMessages), nil):
                    do {
                        let opened = try await provider.openMaildirMaildrop(user: user, path: path)
                        maildrop = opened
                        // The oldest first, as pop3d's session shows them; commit indices stay the same.
                        try await reply(.opened(Array(opened.messages.prefix(maximumMessages))))
                    } catch {
                        // Opened but the listing could not be sent (too large, pop3d gone): unlock before answering.
                        await maildrop?.release()
                        maildrop = nil
                        try await reply(.failed(MaildirProvider.clientError(error, logger: logger, operation: "open maildrop")))
                        return true
                    }
                case (.content(let index), let opened?):
                    do {
                        let fd = try await pool.runIfActive { try opened.openMessageFile(at: index).fd }
                        defer { _ = Glibc.close(fd) }
                        try await reply(.contentFollows, attaching: fd)
                    } catch let error as WorkerChannelError {
                        throw error
                    } catch {
                        try await reply(.failed(MaildirProvider.clientError(error, logger: logger, operation: "open message")))
                    }
                case (.commit(let indices), let opened?):
                    maildrop = nil
                    do {
                        try await opened.commit(deleting: Set(indices))
                        try await reply(.done)
                    } catch {
                        try await reply(.failed(MaildirProvider.clientError(error, logger: logger, operation: "commit")))
                    }
                    return true
                case (.release, let opened):
                    maildrop = nil
                    await opened?.release()
                    try await reply(.done)
                    return true
                default:
                    logger.error("mail worker: unexpected request", metadata: ["request": "\(request)"])
                    await maildrop?.release()
                    return false
                }
            }
        } catch WorkerChannelError.closed {
            // pop3d ended the session without QUIT (or exited): release, delete nothing.
            await maildrop?.release()
            return true
        } catch {
            logger.error("mail worker: \(error)")
            await maildrop?.release()
            return false
        }
    }
}

extension MaildropWorker {
    static func deliver(
        _ source: DeliverySource, path: String, user: String, quota: MaildirQuota, maximumSize: Int?, pool: NIOThreadPool
    ) async -> WorkerMessage {
        do {
            let name = try await pool.runIfActive { () throws -> String in
                try MaildirDelivery.deliver(source, toMaildir: path, user: user, quota: quota, maximumSize: maximumSize)
            }
            return .delivered(name)
        } catch let failure as DeliveryFailure {
            return .deliveryFailed(failure)
        } catch {
            return .deliveryFailed(.temporary("delivery failed, nothing was stored: \(error)"))
        }
    }

    /// pop3d's side of an LMTP delivery through a mail worker (connected to `socket`, taken over and closed): the
    /// spool descriptor is passed to the worker, which writes the copy as the account.
    public static func deliver(
        socket: Int32,
        user: String,
        path: String,
        quota: MaildirQuota,
        maximumSize: Int?,
        prefix: [UInt8],
        spool: Int32,
        size: Int,
        rpcPool: NIOThreadPool,
        replyTimeoutSeconds: Int = MaildropWorker.replyTimeoutSeconds
    ) async throws(DeliveryFailure) -> String {
        let channel = WorkerChannel(socket: socket)
        channel.setReceiveTimeout(seconds: replyTimeoutSeconds)
        let reply: WorkerMessage
        do {
            reply = try await rpcPool.runIfActive {
                defer { channel.close() }
                try channel.send(.deliver(user: user, path: path, quota: quota, maximumSize: maximumSize, prefix: prefix, size: size), attaching: spool)
                return try channel.receive().0
            }
        } catch {
            throw .temporary("mail worker: \(error)")
        }
        switch reply {
        case .delivered(let name): return name
        case .deliveryFailed(let failure): throw failure
        default: throw .temporary("mail worker: unexpected reply to deliver")
        }
    }
}
