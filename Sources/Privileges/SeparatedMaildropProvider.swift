import Accounts
import CPrivSep
import Logging
import MailStore
import NIOPosix
import POP3Core
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Opens each maildrop as its account: in this process when the account's uid/gid is this process's (or the
/// passwd-file gives none), otherwise through a mail worker started by the privileged helper.
public final class SeparatedMaildropProvider: MaildropProvider {
    private let local: MaildirProvider
    private let helper: PrivilegedHelper
    private let identity: MailOwner
    private let firstValidUID: UInt32
    private let rpcPool: NIOThreadPool
    private let readPool: NIOThreadPool
    private let logger: Logger
    private let maximumMessages: Int

    /// How many worker requests may block at once (each holds a thread of `rpcPool` until its worker answers).
    public static let workerRequestThreads = 16

    public init(
        local: MaildirProvider,
        helper: PrivilegedHelper,
        identity: MailOwner,
        firstValidUID: UInt32,
        maximumMessages: Int,
        readPool: NIOThreadPool,
        logger: Logger
    ) {
        self.local = local
        self.maximumMessages = maximumMessages
        self.helper = helper
        self.identity = identity
        self.firstValidUID = firstValidUID
        self.readPool = readPool
        self.logger = logger
        self.rpcPool = NIOThreadPool(numberOfThreads: Self.workerRequestThreads)
        self.rpcPool.start()
    }

    deinit {
        self.rpcPool.shutdownGracefully { _ in }
    }

    public func openMaildrop(user: String, path: String, owner: MailOwner?) async throws -> any Maildrop {
        guard let owner, owner != self.identity else { return try await self.local.openMaildrop(user: user, path: path, owner: owner) }
        guard PrivilegeSeparation.allows(owner, firstValidUID: self.firstValidUID) else {
            self.logger.error(
                "account's uid/gid not allowed for mail access",
                metadata: ["user": "\(logEscaped(user))", "owner": "\(owner)", "first_valid_uid": "\(self.firstValidUID)"]
            )
            throw MaildropError.permanent("mail access not allowed for this account")
        }
        let helper = self.helper
        let socket: Int32
        do {
            socket = try await self.rpcPool.runIfActive { try helper.startWorker(user: user, owner: owner) }
        } catch {
            self.logger.error("cannot start a mail worker", metadata: ["user": "\(logEscaped(user))", "error": "\(error)"])
            throw MaildropError.temporary("maildrop temporarily unavailable")
        }
        return try await WorkerMaildrop.open(
            socket: socket,
            user: user,
            path: path,
            rpcPool: self.rpcPool,
            readPool: self.readPool,
            logger: self.logger,
            maximumMessages: self.maximumMessages
        )
    }
}

extension SeparatedMaildropProvider: DeliveryTarget {
    /// Writes the copy as its account: in this process when the account's uid/gid is this process's (or none is
    /// given), else through a mail worker started as the account, which is handed the spool descriptor.
    public func deliver(_ request: DeliveryRequest) async throws(DeliveryFailure) -> String {
        guard let owner = request.owner, owner != self.identity else { return try await self.local.deliver(request) }
        guard PrivilegeSeparation.allows(owner, firstValidUID: self.firstValidUID) else {
            self.logger.error(
                "account's uid/gid not allowed for mail access",
                metadata: ["user": "\(logEscaped(request.user))", "owner": "\(owner)", "first_valid_uid": "\(self.firstValidUID)"]
            )
            throw .temporary("mail access not allowed for this account's uid/gid")
        }
        let helper = self.helper
        let socket: Int32
        do {
            socket = try await self.rpcPool.runIfActive { try helper.startWorker(user: request.user, owner: owner) }
        } catch {
            self.logger.error("cannot start a mail worker", metadata: ["user": "\(logEscaped(request.user))", "error": "\(error)"])
            throw .temporary("cannot start a mail worker: \(error)")
        }
        return try await MaildropWorker.deliver(
            socket: socket, user: request.user, path: request.path, quota: request.quota, maximumSize: request.maximumSize,
            prefix: request.prefix, spool: request.spool, size: request.size, rpcPool: self.rpcPool
        )
    }
}
