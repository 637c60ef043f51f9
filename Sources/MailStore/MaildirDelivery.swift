#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore
import Synchronization
import SystemIO

/// Durable delivery into a Maildir, as maildir(5) and Dovecot's LDA do it: write `tmp/<unique>`, fsync the file,
/// rename it to `new/<unique>,S=<size>,W=<vsize>`, fsync `new/`. The message is stored as given. The `,W=` field
/// lets every later STAT/LIST skip opening the file.
///
/// Synchronous (blocking): for the `deliver` command and tests; servers call it off the event loop.
public enum MaildirDelivery {
    private static let counter = Atomic<UInt64>(0)

    /// Delivers `message` and returns the file name in `new/`. Creates the Maildir if missing (mode 0700).
    @discardableResult
    public static func deliver(_ message: some Collection<UInt8>, toMaildir path: String) throws -> String {
        let bytes = message.withContiguousStorageIfAvailable { Array($0) } ?? Array(message)
        return try Self.deliver(writing: { fd, tempPath throws -> MessageSize.Counter in
            var counter = MessageSize.Counter()
            try bytes.withUnsafeBytes { raw in
                counter.update(raw)
                try Result { () throws(FileSystemError) in try FileSystem.write(fd, raw, path: tempPath) }.get()
            }
            return counter
        }, toMaildir: path)
    }

    /// Delivers the readable bytes of `buffer`.
    @discardableResult
    public static func deliver(_ buffer: ByteBuffer, toMaildir path: String) throws -> String {
        try Self.deliver(buffer.readableBytesView, toMaildir: path)
    }

    /// Streaming delivery from a file descriptor (standard input for `pop3d deliver`) with bounded memory and the
    /// same durability; size and POP3 size are counted while copying. More than `maximumSize` octets fails with
    /// `DeliveryFailure.tooLarge` and stores nothing.
    @discardableResult
    public static func deliver(readingFrom input: Int32, toMaildir path: String, maximumSize: Int?) throws -> String {
        try Self.deliver(writing: { fd, tempPath throws -> MessageSize.Counter in
            var counter = MessageSize.Counter()
            let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
            defer { chunk.deallocate() }
            while true {
                let n = try FileSystem.read(input, into: chunk, path: "<input>")
                if n == 0 { break }
                let bytes = UnsafeRawBufferPointer(rebasing: chunk[..<n])
                counter.update(bytes)
                if let maximumSize, counter.octets > maximumSize {
                    throw DeliveryFailure.tooLarge("message too large (limit \(maximumSize) bytes)")
                }
                try FileSystem.write(fd, bytes, path: tempPath)
            }
            return counter
        }, toMaildir: path)
    }

    static func deliver(
        writing body: (Int32, String) throws -> MessageSize.Counter,
        toMaildir path: String,
        nameField: String = ""
    ) throws -> String {
        let maildir = MaildropLockTable.key(for: path)
        do {
            try MaildirStore.create(maildir)
            let unique = Self.uniqueName()
            let tempPath = maildir + "/tmp/" + unique
            let fd = try FileSystem.open(tempPath, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
            let counter: MessageSize.Counter
            do {
                counter = try body(fd, tempPath)
                try FileSystem.sync(fd, path: tempPath)
            } catch {
                FileSystem.close(fd)
                _ = try? FileSystem.unlink(tempPath)
                throw error
            }
            FileSystem.close(fd)
            let name = "\(unique),S=\(counter.octets),W=\(counter.pop3Size)\(nameField)"
            // link(2), not rename(2): a name that exists already (another host, a clock step) is never replaced
            // (maildir(5); docs/security-cases.md 58). tmp/ is then cleared.
            guard link(tempPath, maildir + "/new/" + name) == 0 else {
                let code = errno
                _ = try? FileSystem.unlink(tempPath)
                throw FileSystem.fail("link", maildir + "/new/" + name, code)
            }
            _ = try? FileSystem.unlink(tempPath)
            do {
                try FileSystem.syncDirectory(maildir + "/new")
            } catch {
                // Not durable, so not delivered: take the name back, so that the sender's retry cannot make a copy.
                _ = try? FileSystem.unlink(maildir + "/new/" + name)
                throw error
            }
            return name
        } catch let error as MaildropError {
            throw error
        } catch let failure as DeliveryFailure {
            throw failure
        } catch {
            throw MaildirDeliveryError(underlying: "\(error)")
        }
    }

    /// maildir(5) / Dovecot unique name: `<secs>.M<usecs>P<pid>Q<counter>.<hostname>`, host name escaped.
    static func uniqueName() -> String {
        var now = timeval()
        gettimeofday(&now, nil)
        let sequence = Self.counter.wrappingAdd(1, ordering: .relaxed).newValue
        return "\(now.tv_sec).M\(now.tv_usec)P\(ProcessIdentity.pid)Q\(sequence)."
            + MaildirName.escapedHostname(ProcessIdentity.hostname)
    }
}

/// A delivery that failed for a file-system reason (temporary for an MTA). The description names the path: it is for
/// the operator, not for a POP3 client.
public struct MaildirDeliveryError: Error, Sendable, CustomStringConvertible {
    public let underlying: String
    public var description: String { "delivery failed: \(self.underlying)" }
}
