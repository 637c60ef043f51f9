#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import SystemIO

/// Why one account's copy of a message was not stored. Nothing partial is ever left: each case means the Maildir
/// is as it was. `pop3d deliver` maps these to sysexits(3), LMTP to one reply per recipient.
public enum DeliveryFailure: Error, Sendable, Equatable, CustomStringConvertible {
    /// Larger than the size limit (LMTP 552 5.3.4, EX_CANTCREAT).
    case tooLarge(String)
    /// Over the account's quota (LMTP 552 5.2.2 or 452 4.2.2, EX_NOPERM as `dovecot-lda -e`).
    case quotaExceeded(String)
    /// Worth retrying: I/O, a full disk, a missing folder (LMTP 451 4.3.0, EX_TEMPFAIL).
    case temporary(String)

    public var description: String {
        switch self {
        case .tooLarge(let text), .quotaExceeded(let text), .temporary(let text): text
        }
    }
}

/// Where the bytes of a delivery come from.
public enum DeliverySource: Sendable {
    /// Read to its end (standard input of `pop3d deliver`); the size is known only once read.
    case stream(Int32)
    /// `prefix` (header lines this delivery adds) then `size` octets of a spool file read with pread(2) from offset
    /// 0, so that one spool serves every recipient (and a worker given the same descriptor) without a shared offset.
    case spool(prefix: [UInt8], descriptor: Int32, size: Int)
}

extension MaildirDelivery {
    /// One message into one account's Maildir with the account's quota and a size limit applied, durable before it
    /// returns. The quota is checked before anything is written (from the Maildir's `,S=` sizes); a message that
    /// does not fit stores nothing. Blocking; run it as the Maildir's owner.
    public static func deliver(
        _ source: DeliverySource,
        toMaildir path: String,
        user: String,
        quota: MaildirQuota,
        maximumSize: Int?
    ) throws(DeliveryFailure) -> String {
        var sizeLimit = maximumSize
        var quotaRoom: Int?
        if !quota.isUnlimited {
            let used: (bytes: Int, messages: Int)
            do {
                used = try MaildirQuota.usage(ofMaildir: path)
            } catch {
                throw .temporary("cannot measure \(user)'s Maildir for its quota: \(error)")
            }
            if let limit = quota.messages, used.messages >= limit {
                throw .quotaExceeded("quota exceeded: \(user) has \(used.messages) messages (limit \(limit))")
            }
            if let limit = quota.storageBytes {
                let room = limit - used.bytes
                guard room > 0 else { throw .quotaExceeded("quota exceeded: \(user) uses \(used.bytes) of \(limit) bytes") }
                quotaRoom = room
                sizeLimit = min(sizeLimit ?? room, room)
            }
        }
        let overQuota = DeliveryFailure.quotaExceeded(
            "quota exceeded: the message is larger than the \(quotaRoom ?? 0) bytes left for \(user); nothing was stored"
        )
        do {
            switch source {
            case .stream(let descriptor):
                do {
                    return try Self.deliver(readingFrom: descriptor, toMaildir: path, maximumSize: sizeLimit)
                } catch DeliveryFailure.tooLarge(let reason) {
                    // The stream ran past the tighter of the size limit and the room left: say which.
                    if let quotaRoom, quotaRoom == sizeLimit, quotaRoom != maximumSize { throw overQuota }
                    throw DeliveryFailure.tooLarge(reason)
                }
            case .spool(let prefix, let descriptor, let size):
                let total = prefix.count + size
                if let maximumSize, total > maximumSize { throw DeliveryFailure.tooLarge("message too large: \(total) bytes, limit \(maximumSize)") }
                if let quotaRoom, total > quotaRoom { throw overQuota }
                return try Self.deliver(prefix: prefix, spool: descriptor, size: size, toMaildir: path)
            }
        } catch let failure as DeliveryFailure {
            throw failure
        } catch {
            throw .temporary("delivery failed, nothing was stored: \(error)")
        }
    }

    /// `prefix` then `size` octets of `spool` (pread from offset 0) as one new message.
    static func deliver(prefix: [UInt8], spool: Int32, size: Int, toMaildir path: String, nameField: String = "") throws -> String {
        try Self.deliver(writing: { fd, tempPath throws -> MessageSize.Counter in
            var counter = MessageSize.Counter()
            try prefix.withUnsafeBytes { raw in
                counter.update(raw)
                try Result { () throws(FileSystemError) in try FileSystem.write(fd, raw, path: tempPath) }.get()
            }
            let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 16)
            defer { chunk.deallocate() }
            var offset = 0
            while offset < size {
                let want = min(chunk.count, size - offset)
                let n = try FileSystem.pread(spool, into: UnsafeMutableRawBufferPointer(rebasing: chunk[..<want]), at: UInt64(offset), path: "<spool>")
                guard n > 0 else { throw MaildirDeliveryError(underlying: "the spool file is shorter than its \(size) bytes") }
                let bytes = UnsafeRawBufferPointer(rebasing: chunk[..<n])
                counter.update(bytes)
                try FileSystem.write(fd, bytes, path: tempPath)
                offset += n
            }
            return counter
        }, toMaildir: path, nameField: nameField)
    }
}

/// One copy of a message for one account, as LMTP asks a backend to store it.
public struct DeliveryRequest: Sendable {
    public var user: String
    /// The account's Maildir.
    public var path: String
    /// The account's uid/gid from the passwd-file, if it gives them: the copy is written as this owner.
    public var owner: MailOwner?
    public var quota: MaildirQuota
    public var maximumSize: Int?
    /// The header lines this copy starts with (Return-Path, Delivered-To, Received).
    public var prefix: [UInt8]
    /// The message as received, in a spool file read with pread(2) (shared by every copy).
    public var spool: Int32
    public var size: Int

    public init(user: String, path: String, owner: MailOwner?, quota: MaildirQuota, maximumSize: Int?, prefix: [UInt8], spool: Int32, size: Int) {
        self.user = user
        self.path = path
        self.owner = owner
        self.quota = quota
        self.maximumSize = maximumSize
        self.prefix = prefix
        self.spool = spool
        self.size = size
    }
}

/// The delivery side of a storage backend: stores one copy durably (fsynced, linked, directory fsynced) before it
/// returns its name, or throws a `DeliveryFailure` having stored nothing.
public protocol DeliveryTarget: Sendable {
    func deliver(_ request: DeliveryRequest) async throws(DeliveryFailure) -> String
}

extension MaildirProvider: DeliveryTarget {
    /// Writes the copy in this process, as this process's uid.
    public func deliver(_ request: DeliveryRequest) async throws(DeliveryFailure) -> String {
        let result: Result<String, DeliveryFailure>
        do {
            result = try await self.threadPool.runIfActive { () -> Result<String, DeliveryFailure> in
                Result { () throws(DeliveryFailure) -> String in
                    try MaildirDelivery.deliver(
                        .spool(prefix: request.prefix, descriptor: request.spool, size: request.size),
                        toMaildir: request.path, user: request.user, quota: request.quota, maximumSize: request.maximumSize
                    )
                }
            }
        } catch {
            throw .temporary("delivery failed, nothing was stored: \(error)")
        }
        return try result.get()
    }
}
