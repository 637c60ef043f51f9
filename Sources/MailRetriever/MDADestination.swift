import NIOCore
import SystemIO

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Delivery through a command (`procmail -d alice`, `maildrop`, `dovecot-lda`…), run as `/bin/sh -c COMMAND` with the
/// message (LF endings) on its standard input. Exit status 0 means delivered.
///
/// At-least-once, not exactly-once: the command is a black box, so a crash after it succeeded but before the journal
/// recorded the delivery makes the next run deliver the message again.
public final class MDADestination: MessageDestination {
    public let command: String
    /// A command still running after this long is killed (with everything it started) and the delivery fails:
    /// a hung MDA must not hang the fetch (docs/security-cases.md 99). No DELE follows; the next run retries.
    public let timeoutSeconds: Int
    private var spoolDirectory: String?

    public init(command: String, timeoutSeconds: Int = 300) {
        self.command = command
        self.timeoutSeconds = timeoutSeconds
    }

    /// Spool files go to the journal's state directory. They are unlinked as soon as they are open, so a crash
    /// leaves nothing behind.
    public func recover(journal: UIDLJournal) throws {
        spoolDirectory = journal.stateDirectory
    }

    public func begin(uid: String) throws -> any MessageSink {
        guard let spoolDirectory else { throw MailRetrieverError.notRecovered }
        let (fd, path) = try Self.spoolFile(in: spoolDirectory, prefix: ".mda-spool")
        return Sink(command: command, timeoutSeconds: timeoutSeconds, fd: fd, path: path)
    }

    /// A spool file for one message, unlinked as soon as it is open (a crash leaves nothing behind). A name taken
    /// already (EEXIST) is retried with another random name, 100 times at most.
    static func spoolFile(in directory: String, prefix: String) throws -> (fd: Int32, path: String) {
        for _ in 0..<100 {
            let path = FileSystem.join(directory, "\(prefix).\(getpid()).\(UInt64.random(in: 0...UInt64.max))")
            guard let fd = try FileSystem.createExclusive(path, O_RDWR) else { continue }
            _ = unlink(path)
            return (fd, path)
        }
        throw FileSystemError("open", path: directory + "/\(prefix).*", errno: EEXIST)
    }

    private final class Sink: MessageSink {
        private let command: String
        private let timeoutSeconds: Int
        private var fd: Int32
        private let path: String
        private let writer: BufferedFileWriter
        private var converter = CRLFToLF()

        init(command: String, timeoutSeconds: Int, fd: Int32, path: String) {
            self.command = command
            self.timeoutSeconds = timeoutSeconds
            self.fd = fd
            self.path = path
            self.writer = BufferedFileWriter(fd: fd, path: path)
        }

        deinit {
            abort()
        }

        func write(_ chunk: ByteBuffer) throws {
            guard fd >= 0 else { throw MailRetrieverError.sinkClosed }
            try writer.append(contentsOf: CRLFToLF.convert(chunk, with: &converter))
        }

        func commit() throws {
            guard fd >= 0 else { throw MailRetrieverError.sinkClosed }
            defer { abort() }
            var tail: [UInt8] = []
            converter.finish(into: &tail)
            try writer.append(contentsOf: tail)
            try writer.flush()
            guard lseek(fd, 0, SEEK_SET) == 0 else { throw FileSystemError("lseek", path: path, errno: errno) }
            let result = try Subprocess.runShell(command, standardInput: fd, capture: .standardError, timeoutSeconds: timeoutSeconds)
            guard result.succeeded, !result.timedOut else {
                throw MailRetrieverError.mdaFailed(
                    command: command,
                    exitStatus: result.exitStatus,
                    signal: result.signal,
                    stderr: result.timedOut ? "killed after \(timeoutSeconds) s without finishing" : result.firstLine
                )
            }
        }

        func abort() {
            guard fd >= 0 else { return }
            FileSystem.close(fd)
            fd = -1
        }
    }
}
