import NIOCore
import SystemIO

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Where downloaded messages go: a Maildir, an mbox, or a delivery command.
///
/// Messages arrive as chunks of CRLF text (POP3 wire form after dot-unstuffing); destinations store LF line endings.
/// The caller's sequence for each message is:
///
/// ```
/// destination.recover(journal:)            // once per run, before any delivery, under the AccountLock
/// guard !journal.entry(for: uid)?.delivered && !destination.isStored(uid:) …
/// let sink = try destination.begin(uid:)
/// try sink.write(chunk) …                   // abort() on any error
/// try sink.commit()                         // the message is complete (durable, or on its way: a Maildir)
/// … more messages …
/// try destination.flush()                   // every committed message is durable as a whole, or this throws
/// try journal.markDelivered(uids)           // durable; only now may the messages be DELE'd
/// ```
public protocol MessageDestination: AnyObject {
    /// Called once per run before any delivery: recovers after a crash (see each type) and learns which UIDs are
    /// already stored.
    func recover(journal: UIDLJournal) throws

    /// Starts a message. Throws ``MailRetrieverError/alreadyStored(uid:)`` for a UID the destination already holds.
    func begin(uid: String) throws -> any MessageSink

    /// True when the destination already holds the message, even if the journal does not say so yet
    /// (a crash between storing and journaling). The caller then marks it delivered instead of downloading it.
    func isStored(uid: String) -> Bool

    /// Makes every message committed so far durable as a whole (for a Maildir: the directory entries). Only after
    /// it returns may the caller journal those messages as delivered. Lets the caller pay one directory fsync per
    /// batch rather than per message.
    func flush() throws

    /// How many committed messages may wait for `flush()` and the journal. 1 where each message must be journaled
    /// before the next one begins: an mbox's crash recovery knows only the last append, and an MDA cannot tell what
    /// it already delivered.
    var commitBatchLimit: Int { get }
}

extension MessageDestination {
    public func isStored(uid: String) -> Bool { false }
    public func flush() throws {}
    public var commitBatchLimit: Int { 1 }
}

/// One message on its way into a destination.
public protocol MessageSink: AnyObject {
    /// Appends CRLF text; it is stored with LF endings. A CR at the end of a chunk may pair with an LF at the start
    /// of the next. Memory use is bounded whatever the message size.
    func write(_ chunk: ByteBuffer) throws
    /// Ends the message. An mbox or MDA commit returns when the message is durable and whole; a Maildir's returns
    /// once the data is written, and its fsync runs meanwhile: `MessageDestination.flush()` waits for it (and
    /// throws if it failed) and makes the message's place in the destination durable. Recording it in the journal
    /// is the caller's job, after `flush()`.
    func commit() throws
    /// Removes partial data. Safe to call after a failed `write` or `commit`, and more than once.
    func abort()
}

/// Errors of the retriever layer (file system failures are ``FileSystemError``).
public enum MailRetrieverError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `begin` for a message the destination already holds.
    case alreadyStored(uid: String)
    /// `begin` before `recover(journal:)`.
    case notRecovered
    /// The sink was already committed or aborted.
    case sinkClosed
    /// The MDA command failed: exit status or signal, and the first line of its standard error.
    case mdaFailed(command: String, exitStatus: Int32?, signal: Int32?, stderr: String)
    /// The mbox dotlock stayed held (by a live process) past the timeout.
    case mboxLockTimeout(path: String)
    /// The journal file is not ours (unknown header) and is left untouched.
    case journalUnreadable(path: String, reason: String)
    /// A child process could not be started.
    case spawnFailed(command: String, errno: Int32)

    public var description: String {
        switch self {
        case .alreadyStored(let uid):
            return "message \(uid) is already stored"
        case .notRecovered:
            return "destination used before recover(journal:)"
        case .sinkClosed:
            return "message sink already committed or aborted"
        case .mdaFailed(let command, let status, let signal, let stderr):
            var text = "delivery command '\(command)' "
            if let signal {
                text += "killed by signal \(signal)"
            } else {
                text += "exited with status \(status ?? -1)"
            }
            if !stderr.isEmpty { text += ": \(stderr)" }
            return text
        case .mboxLockTimeout(let path):
            return "timed out waiting for the mbox lock \(path).lock"
        case .journalUnreadable(let path, let reason):
            return "journal \(path): \(reason)"
        case .spawnFailed(let command, let code):
            return "cannot run '\(command)': errno \(code)"
        }
    }
}

/// Streaming CRLF → LF conversion. A lone CR (not followed by LF) is kept.
struct CRLFToLF {
    private var pendingCR = false

    /// Appends the converted bytes of `input` to `output`: runs between CRs are copied whole (memchr finds the CRs).
    mutating func convert(_ input: UnsafeRawBufferPointer, into output: inout [UInt8]) {
        guard let base = input.baseAddress, !input.isEmpty else { return }
        let count = input.count
        var index = 0
        if pendingCR {
            pendingCR = false
            if input[0] != UInt8(ascii: "\n") { output.append(UInt8(ascii: "\r")) }
        }
        while index < count {
            guard let found = memchr(base + index, 0x0D, count - index) else {
                output.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[index..<count]))
                return
            }
            let cr = base.distance(to: UnsafeRawPointer(found))
            output.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[index..<cr]))
            if cr + 1 == count {
                pendingCR = true
                return
            }
            // A CR before LF goes (the LF is copied with the next run); any other CR stays.
            if input[cr + 1] != UInt8(ascii: "\n") { output.append(UInt8(ascii: "\r")) }
            index = cr + 1
        }
    }

    /// The end of the message: a held CR was a lone CR.
    mutating func finish(into output: inout [UInt8]) {
        if pendingCR {
            output.append(UInt8(ascii: "\r"))
            pendingCR = false
        }
    }

    static func convert(_ chunk: ByteBuffer, with converter: inout CRLFToLF) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(chunk.readableBytes)
        chunk.withUnsafeReadableBytes { converter.convert($0, into: &output) }
        return output
    }
}

/// Streaming mboxrd quoting of LF text: every line matching `^>*From ` gets one more leading `>`.
/// Holds back at most a line's leading `>*From` prefix (as a count), so memory stays bounded.
///
/// - SeeAlso: [mboxrd](https://www.loc.gov/preservation/digital/formats/fdd/fdd000385.shtml),
///   RFC 4155 §2 (the `From ` separator line).
struct MboxrdQuoter {
    private static let from: [UInt8] = Array("From ".utf8)
    private var atLineStart = true
    private var quoteCount = 0
    private var matched = 0
    /// Whether the last byte emitted was LF (or nothing was emitted).
    private(set) var endsWithNewline = true
    private(set) var isEmpty = true

    mutating func quote(_ input: [UInt8], into output: inout [UInt8]) {
        for byte in input { quote(byte, into: &output) }
    }

    private mutating func emit(_ byte: UInt8, into output: inout [UInt8]) {
        output.append(byte)
        endsWithNewline = byte == UInt8(ascii: "\n")
        isEmpty = false
    }

    private mutating func quote(_ byte: UInt8, into output: inout [UInt8]) {
        if !atLineStart {
            emit(byte, into: &output)
            if byte == UInt8(ascii: "\n") { atLineStart = true }
            return
        }
        if matched == 0 && byte == UInt8(ascii: ">") {
            quoteCount += 1
            return
        }
        if byte == Self.from[matched] {
            matched += 1
            if matched == Self.from.count {
                emit(UInt8(ascii: ">"), into: &output)
                flushPrefix(into: &output)
                atLineStart = false
            }
            return
        }
        flushPrefix(into: &output)
        atLineStart = false
        emit(byte, into: &output)
        if byte == UInt8(ascii: "\n") { atLineStart = true }
    }

    private mutating func flushPrefix(into output: inout [UInt8]) {
        for _ in 0..<quoteCount { emit(UInt8(ascii: ">"), into: &output) }
        for index in 0..<matched { emit(Self.from[index], into: &output) }
        quoteCount = 0
        matched = 0
    }

    mutating func finish(into output: inout [UInt8]) {
        flushPrefix(into: &output)
        atLineStart = true
    }
}
