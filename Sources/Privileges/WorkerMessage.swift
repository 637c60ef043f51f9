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

/// One message between pop3d and a mail worker: the process that opens one account's maildrop with the account's
/// own uid/gid (privilege separation, see `MaildropWorker`).
///
/// On the wire each message is a frame: a 4-byte big-endian length, an opcode byte, then its fields (integers
/// big-endian, strings as a 4-byte length and UTF-8). A message file travels as a descriptor (SCM_RIGHTS) attached
/// to `.contentFollows`, so message bytes never pass through the socket.
enum WorkerMessage: Equatable, Sendable {
    // pop3d → worker
    /// `maximumMessages`: the worker lists at most this many, the oldest (`limits.maildrop_messages`).
    case open(user: String, path: String, maximumMessages: Int)
    case content(index: Int)
    case commit(indices: [Int])
    case release
    /// One message into the Maildir at `path` (LMTP): `prefix` then `size` octets of the spool file attached.
    case deliver(user: String, path: String, quota: MaildirQuota, maximumSize: Int?, prefix: [UInt8], size: Int)
    // worker → pop3d
    case opened([MaildropMessage])
    case contentFollows
    case done
    case failed(MaildropError)
    case delivered(String)
    case deliveryFailed(DeliveryFailure)

    /// Whether a descriptor travels with this message: the message file, or the spool of a delivery.
    var carriesDescriptor: Bool {
        switch self {
        case .contentFollows, .deliver: true
        default: false
        }
    }

    /// Upper bound of one frame. The largest is `.opened` for a big maildrop: about 40 bytes per message, so this
    /// allows some 3 million messages.
    static let maximumFrameLength = 128 << 20

    private enum Opcode: UInt8 {
        case open = 1, content, commit, release, deliver
        case opened = 0x81, contentFollows, done, failed, delivered, deliveryFailed
    }

    func encode() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(0))
        switch self {
        case .open(let user, let path, let maximumMessages):
            buffer.writeInteger(Opcode.open.rawValue)
            Self.writeString(user, to: &buffer)
            Self.writeString(path, to: &buffer)
            buffer.writeInteger(UInt32(clamping: maximumMessages))
        case .content(let index):
            buffer.writeInteger(Opcode.content.rawValue)
            buffer.writeInteger(UInt32(truncatingIfNeeded: index))
        case .commit(let indices):
            buffer.writeInteger(Opcode.commit.rawValue)
            buffer.writeInteger(UInt32(indices.count))
            for index in indices { buffer.writeInteger(UInt32(truncatingIfNeeded: index)) }
        case .release:
            buffer.writeInteger(Opcode.release.rawValue)
        case .deliver(let user, let path, let quota, let maximumSize, let prefix, let size):
            buffer.writeInteger(Opcode.deliver.rawValue)
            Self.writeString(user, to: &buffer)
            Self.writeString(path, to: &buffer)
            // -1 for "no limit".
            for limit in [quota.storageBytes, quota.messages, maximumSize] { buffer.writeInteger(Int64(limit ?? -1)) }
            buffer.writeInteger(UInt32(prefix.count))
            buffer.writeBytes(prefix)
            buffer.writeInteger(UInt64(size))
        case .delivered(let name):
            buffer.writeInteger(Opcode.delivered.rawValue)
            Self.writeString(name, to: &buffer)
        case .deliveryFailed(let failure):
            buffer.writeInteger(Opcode.deliveryFailed.rawValue)
            switch failure {
            case .tooLarge(let text): buffer.writeInteger(UInt8(1)); Self.writeString(text, to: &buffer)
            case .quotaExceeded(let text): buffer.writeInteger(UInt8(2)); Self.writeString(text, to: &buffer)
            case .temporary(let text): buffer.writeInteger(UInt8(3)); Self.writeString(text, to: &buffer)
            }
        case .opened(let messages):
            buffer.writeInteger(Opcode.opened.rawValue)
            buffer.writeInteger(UInt32(messages.count))
            for message in messages {
                buffer.writeInteger(UInt64(message.size))
                Self.writeString(message.uniqueID, to: &buffer)
            }
        case .contentFollows:
            buffer.writeInteger(Opcode.contentFollows.rawValue)
        case .done:
            buffer.writeInteger(Opcode.done.rawValue)
        case .failed(let error):
            buffer.writeInteger(Opcode.failed.rawValue)
            switch error {
            case .inUse: buffer.writeInteger(UInt8(1))
            case .messageGone: buffer.writeInteger(UInt8(2))
            case .temporary(let text):
                buffer.writeInteger(UInt8(3))
                Self.writeString(text, to: &buffer)
            case .permanent(let text):
                buffer.writeInteger(UInt8(4))
                Self.writeString(text, to: &buffer)
            }
        }
        // A frame over the limit is refused by `WorkerChannel.send` before it goes out.
        buffer.setInteger(UInt32(truncatingIfNeeded: buffer.readableBytes - 4), at: 0)
        return buffer
    }

    /// Decodes one frame's payload (without the length prefix). Anything malformed or left over is an error.
    static func decode(_ payload: inout ByteBuffer) throws(WorkerChannelError) -> WorkerMessage {
        guard let code = payload.readInteger(as: UInt8.self), let opcode = Opcode(rawValue: code) else {
            throw .malformed("unknown opcode")
        }
        let message: WorkerMessage
        switch opcode {
        case .open:
            message = .open(
                user: try Self.readString(&payload),
                path: try Self.readString(&payload),
                maximumMessages: Int(try Self.readInteger(&payload, as: UInt32.self))
            )
        case .content:
            message = .content(index: Int(try Self.readInteger(&payload, as: UInt32.self)))
        case .commit:
            let count = Int(try Self.readInteger(&payload, as: UInt32.self))
            guard count <= payload.readableBytes / 4 else { throw .malformed("index count exceeds frame") }
            var indices: [Int] = []
            indices.reserveCapacity(count)
            for _ in 0..<count { indices.append(Int(try Self.readInteger(&payload, as: UInt32.self))) }
            message = .commit(indices: indices)
        case .release:
            message = .release
        case .deliver:
            let user = try Self.readString(&payload)
            let path = try Self.readString(&payload)
            var limits: [Int?] = []
            for _ in 0..<3 {
                let value = try Self.readInteger(&payload, as: Int64.self)
                guard value >= -1 else { throw .malformed("negative limit") }
                limits.append(value == -1 ? nil : Int(value))
            }
            let prefixLength = Int(try Self.readInteger(&payload, as: UInt32.self))
            guard let prefix = payload.readBytes(length: prefixLength) else { throw .malformed("truncated prefix") }
            let size = try Self.readInteger(&payload, as: UInt64.self)
            guard size <= UInt64(Int.max) else { throw .malformed("size out of range") }
            message = .deliver(
                user: user, path: path, quota: MaildirQuota(storageBytes: limits[0], messages: limits[1]),
                maximumSize: limits[2], prefix: prefix, size: Int(size)
            )
        case .delivered:
            message = .delivered(try Self.readString(&payload))
        case .deliveryFailed:
            let kind = try Self.readInteger(&payload, as: UInt8.self)
            let text = try Self.readString(&payload)
            switch kind {
            case 1: message = .deliveryFailed(.tooLarge(text))
            case 2: message = .deliveryFailed(.quotaExceeded(text))
            case 3: message = .deliveryFailed(.temporary(text))
            default: throw .malformed("unknown delivery failure")
            }
        case .opened:
            let count = Int(try Self.readInteger(&payload, as: UInt32.self))
            guard count <= payload.readableBytes / 12 else { throw .malformed("message count exceeds frame") }
            var messages: [MaildropMessage] = []
            messages.reserveCapacity(count)
            for _ in 0..<count {
                let size = try Self.readInteger(&payload, as: UInt64.self)
                guard size <= UInt64(Int.max) else { throw .malformed("message size out of range") }
                messages.append(MaildropMessage(uniqueID: try Self.readString(&payload), size: Int(size)))
            }
            message = .opened(messages)
        case .contentFollows:
            message = .contentFollows
        case .done:
            message = .done
        case .failed:
            switch try Self.readInteger(&payload, as: UInt8.self) {
            case 1: message = .failed(.inUse)
            case 2: message = .failed(.messageGone)
            case 3: message = .failed(.temporary(try Self.readString(&payload)))
            case 4: message = .failed(.permanent(try Self.readString(&payload)))
            default: throw .malformed("unknown error kind")
            }
        }
        guard payload.readableBytes == 0 else { throw .malformed("trailing bytes") }
        return message
    }

    private static func writeString(_ text: String, to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(text.utf8.count))
        buffer.writeString(text)
    }

    private static func readInteger<T: FixedWidthInteger>(_ buffer: inout ByteBuffer, as: T.Type) throws(WorkerChannelError) -> T {
        guard let value = buffer.readInteger(as: T.self) else { throw .malformed("truncated") }
        return value
    }

    private static func readString(_ buffer: inout ByteBuffer) throws(WorkerChannelError) -> String {
        let length = Int(try Self.readInteger(&buffer, as: UInt32.self))
        guard let bytes = buffer.readBytes(length: length) else { throw .malformed("truncated string") }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw .malformed("invalid UTF-8") }
        return text
    }
}
