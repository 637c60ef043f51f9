import Foundation
import Logging
import NIOCore
import NIOPosix
import POP3Core
import SystemIO
import MailStoreTestSupport
import Testing

import MailStore

@testable import Privileges

#if canImport(Glibc)
import Glibc
#endif

/// The mail-worker protocol (privilege separation), with both ends in this process over a real socket pair: the
/// worker end is `MaildropWorker.serve`, pop3d's end `WorkerMaildrop`. (Running the worker as another uid is
/// covered end to end, as root, by `test_privilege_separation` in tests/test_interop.py.)
@Suite("Mail worker")
final class MaildropWorkerTests: Sendable {
    /// Blocking socket calls of both ends run here; one pool per test, shut down with it.
    let rpcPool: NIOThreadPool

    init() {
        self.rpcPool = NIOThreadPool(numberOfThreads: 4)
        self.rpcPool.start()
    }

    deinit {
        try? self.rpcPool.syncShutdownGracefully()
    }

    static var logger: Logger {
        var logger = Logger(label: "MaildropWorkerTests")
        logger.logLevel = .critical
        return logger
    }

    /// The worker's store, on this test's pool: its blocking receive must not hold a thread of the shared singleton
    /// pool that other tests (and this test's chunk reads) need.
    func workerProvider() -> MaildirProvider {
        MaildirProvider(threadPool: self.rpcPool, logger: Self.logger)
    }

    func socketPair() -> (pop3d: Int32, worker: Int32) {
        var pair: [Int32] = [-1, -1]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        return (pair[0], pair[1])
    }

    /// Starts a worker on its end of a fresh pair and opens `path` through it.
    func openThroughWorker(_ path: String) async throws -> (maildrop: WorkerMaildrop, worker: Task<Bool, Never>) {
        let (pop3d, workerEnd) = self.socketPair()
        let provider = self.workerProvider()
        let worker = Task { await MaildropWorker.serve(socket: workerEnd, provider: provider, logger: Self.logger) }
        do {
            let maildrop = try await WorkerMaildrop.open(
                socket: pop3d,
                user: "u",
                path: path,
                rpcPool: self.rpcPool,
                readPool: .singleton,
                logger: Self.logger
            )
            return (maildrop, worker)
        } catch {
            _ = await worker.value
            throw error
        }
    }

    func threeMessages() throws -> MaildirFixture {
        let fixture = try MaildirFixture()
        try fixture.createLayout()
        try fixture.write("new/1700000001.M1P1.host", "Subject: one\n\nfirst\n")
        try fixture.write("cur/1700000002.M2P1.host:2,S", "Subject: two\r\n\r\nsecond\r\n")
        try fixture.write("new/1700000003.M3P1.host", String(repeating: "line of the third message\n", count: 2_000))
        return fixture
    }

    @Test func everyMessageSurvivesEncoding() throws {
        let messages: [WorkerMessage] = [
            .open(user: "alice@example.org", path: "/var/mail/ä/Maildir", maximumMessages: 1_000_000),
            .content(index: 0), .content(index: 4_000_000_000),
            .commit(indices: []), .commit(indices: [0, 5, 99]),
            .release,
            .opened([]), .opened([MaildropMessage(uniqueID: "000000016553F100", size: 12), MaildropMessage(uniqueID: "x", size: Int(Int32.max) + 5)]),
            .contentFollows, .done,
            .failed(.inUse), .failed(.messageGone), .failed(.temporary("try later")), .failed(.permanent("no")),
            .deliver(user: "u", path: "/m", quota: MaildirQuota(storageBytes: 1 << 30, messages: nil), maximumSize: 5, prefix: Array("Return-Path: <>\n".utf8), size: 1 << 33),
            .deliver(user: "u", path: "/m", quota: MaildirQuota(), maximumSize: nil, prefix: [], size: 0),
            .delivered("1700000001.M1P1Q1.host,S=5,W=6"),
            .deliveryFailed(.tooLarge("a")), .deliveryFailed(.quotaExceeded("b")), .deliveryFailed(.temporary("c")),
        ]
        for message in messages {
            var frame = message.encode()
            let length = frame.readInteger(as: UInt32.self)
            #expect(Int(length ?? 0) == frame.readableBytes)
            #expect(try WorkerMessage.decode(&frame) == message)
        }
    }

    @Test func malformedPayloadsAreRejected() {
        func decode(_ bytes: [UInt8]) -> WorkerChannelError? {
            var buffer = ByteBuffer(bytes: bytes)
            do {
                _ = try WorkerMessage.decode(&buffer)
                return nil
            } catch {
                return error
            }
        }
        #expect(decode([]) != nil)
        #expect(decode([0x7F]) != nil, "unknown opcode")
        #expect(decode([0x83]) == nil)
        #expect(decode([0x83, 0]) == .malformed("trailing bytes"))
        #expect(decode([2, 0, 0]) == .malformed("truncated"))
        #expect(decode([1, 0, 0, 0, 9, 0x61]) == .malformed("truncated string"))
        #expect(decode([1, 0, 0, 0, 1, 0xFF, 0, 0, 0, 0, 0, 0, 0, 1]) == .malformed("invalid UTF-8"))
        #expect(decode([1, 0, 0, 0, 1, 0x61, 0, 0, 0, 1, 0x62]) == .malformed("truncated"), "open without its limit")
        // A count larger than the frame could hold is refused before anything is allocated for it.
        #expect(decode([3, 0xFF, 0xFF, 0xFF, 0xFF]) == .malformed("index count exceeds frame"))
        #expect(decode([0x81, 0x10, 0, 0, 0]) == .malformed("message count exceeds frame"))
        #expect(decode([0x84, 9]) == .malformed("unknown error kind"))
    }

    @Test func workerListsServesAndCommitsLikeTheLocalProvider() async throws {
        let fixture = try self.threeMessages()
        defer { fixture.cleanUp() }
        let local = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil)
        let expected = local.messages
        var expectedBytes: [[UInt8]] = []
        for index in expected.indices { expectedBytes.append(try await local.contentBytes(at: index).bytes) }
        await local.release()

        let (maildrop, worker) = try await self.openThroughWorker(fixture.path)
        #expect(maildrop.messages == expected)
        for index in expected.indices {
            // Chunks are read from the descriptor the worker opened, bounded by the chunk size.
            let (bytes, chunks) = try await maildrop.contentBytes(at: index, chunkSize: 1000)
            #expect(bytes == expectedBytes[index])
            #expect(chunks == max(1, (bytes.count + 999) / 1000))
        }
        await #expect(throws: MaildropError.permanent("no such message")) { try await maildrop.content(ofMessageAt: 3, chunkSize: 10) }
        try await maildrop.commit(deleting: [1])
        #expect(await worker.value)
        #expect(try fixture.list("cur").isEmpty)
        #expect(try fixture.list("new").count == 2)
        #expect(!fixture.exists("pop3d.lock"))
        // Committing again is a no-op, as for the local provider.
        try await maildrop.commit(deleting: [0])
        #expect(try fixture.list("new").count == 2)
    }

    @Test func droppedSessionReleasesTheLockAndDeletesNothing() async throws {
        let fixture = try self.threeMessages()
        defer { fixture.cleanUp() }
        var opened: (maildrop: WorkerMaildrop, worker: Task<Bool, Never>)? = try await self.openThroughWorker(fixture.path)
        let worker = opened!.worker
        #expect(fixture.exists("pop3d.lock"))
        await #expect(throws: MaildropError.inUse) { try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil) }
        opened = nil  // pop3d lost the connection: its end of the socket closes, no release request
        #expect(await worker.value)
        #expect(!fixture.exists("pop3d.lock"))
        let again = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(again.messages.count == 3)
        await again.release()
    }

    @Test func releaseUnlocksWithoutDeleting() async throws {
        let fixture = try self.threeMessages()
        defer { fixture.cleanUp() }
        let (maildrop, worker) = try await self.openThroughWorker(fixture.path)
        await maildrop.release()
        #expect(await worker.value)
        #expect(!fixture.exists("pop3d.lock"))
        #expect(try fixture.list("new").count + fixture.list("cur").count == 3)
        await maildrop.release()  // idempotent
    }

    @Test func workerReportsInUseAndVanishedMessages() async throws {
        let fixture = try self.threeMessages()
        defer { fixture.cleanUp() }
        let held = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil)
        await #expect(throws: MaildropError.inUse) { try await self.openThroughWorker(fixture.path) }
        await held.release()

        let (maildrop, worker) = try await self.openThroughWorker(fixture.path)
        try fixture.remove("new/1700000001.M1P1.host")
        await #expect(throws: MaildropError.messageGone) { try await maildrop.content(ofMessageAt: 0, chunkSize: 100) }
        // The session goes on after a vanished message.
        #expect(try await maildrop.contentString(at: 1).hasPrefix("Subject: two"))
        await maildrop.release()
        #expect(await worker.value)
    }

    @Test func aWorkerThatDiesOrBabblesIsATemporaryFailure() async throws {
        // The worker exits before answering.
        let (pop3d, workerEnd) = self.socketPair()
        close(workerEnd)
        await #expect(throws: MaildropError.temporary("maildrop temporarily unavailable")) {
            try await WorkerMaildrop.open(socket: pop3d, user: "u", path: "/nonexistent", rpcPool: self.rpcPool, readPool: .singleton, logger: Self.logger)
        }
        // The worker answers with a frame longer than the limit.
        let (pop3d2, babbler) = self.socketPair()
        defer { close(babbler) }
        let garbage: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0x81]
        #expect(write(babbler, garbage, garbage.count) == garbage.count)
        await #expect(throws: MaildropError.temporary("maildrop temporarily unavailable")) {
            try await WorkerMaildrop.open(socket: pop3d2, user: "u", path: "/nonexistent", rpcPool: self.rpcPool, readPool: .singleton, logger: Self.logger)
        }
    }

    @Test func workerRefusesRequestsOutOfOrder() async throws {
        let (pop3d, workerEnd) = self.socketPair()
        let provider = self.workerProvider()
        let worker = Task { await MaildropWorker.serve(socket: workerEnd, provider: provider, logger: Self.logger) }
        let channel = WorkerChannel(socket: pop3d)
        try channel.send(.content(index: 0))  // nothing opened yet
        #expect(await worker.value == false)
        #expect(throws: WorkerChannelError.closed) { try channel.receive() }
    }

    /// A reply that comes after the deadline must not be taken for the answer to the next request (it would send
    /// one message's bytes for another): after a timeout the connection is closed and later requests fail.
    @Test func aLateReplyIsNeverTakenForTheNextOne() async throws {
        let fixture = try self.threeMessages()
        defer { fixture.cleanUp() }
        let (pop3d, workerEnd) = self.socketPair()
        let messageOne = fixture.path + "/new/1700000001.M1P1.host"
        // A slow worker: lists two messages, then answers the first content request 2 s late.
        let slow = Thread {
            let channel = WorkerChannel(socket: workerEnd)
            defer { channel.close() }
            guard case (.open, _)? = try? channel.receive() else { return }
            try? channel.send(.opened([MaildropMessage(uniqueID: "a", size: 20), MaildropMessage(uniqueID: "b", size: 30)]))
            guard case (.content, _)? = try? channel.receive() else { return }
            sleep(2)
            let fd = open(messageOne, O_RDONLY)
            try? channel.send(.contentFollows, attaching: fd)
            close(fd)
            _ = try? channel.receive()
        }
        slow.start()
        let maildrop = try await WorkerMaildrop.open(
            socket: pop3d, user: "u", path: fixture.path, rpcPool: self.rpcPool, readPool: .singleton, logger: Self.logger,
            replyTimeoutSeconds: 1
        )
        await #expect(throws: MaildropError.temporary("maildrop temporarily unavailable")) { try await maildrop.content(ofMessageAt: 0, chunkSize: 100) }
        try await Task.sleep(for: .seconds(2))  // the late reply has arrived by now
        await #expect(throws: MaildropError.temporary("maildrop temporarily unavailable")) { try await maildrop.content(ofMessageAt: 1, chunkSize: 100) }
        await maildrop.release()
        while !slow.isFinished { try await Task.sleep(for: .milliseconds(10)) }
    }

    /// The account owns its Maildir, so its worker may find a FIFO or a device where a message should be: the open
    /// must not block, and only a regular file is served.
    @Test func aMessageThatIsNotARegularFileIsRefused() async throws {
        let fixture = try self.threeMessages()
        defer { fixture.cleanUp() }
        let (maildrop, worker) = try await self.openThroughWorker(fixture.path)
        let first = fixture.path + "/new/1700000001.M1P1.host"
        try fixture.remove("new/1700000001.M1P1.host")
        #expect(mkfifo(first, 0o600) == 0)
        await #expect(throws: MaildropError.permanent("message could not be read")) { try await maildrop.content(ofMessageAt: 0, chunkSize: 100) }
        try fixture.remove("new/1700000001.M1P1.host")
        #expect(symlink("/dev/zero", first) == 0)
        await #expect(throws: MaildropError.permanent("message could not be read")) { try await maildrop.content(ofMessageAt: 0, chunkSize: 100) }
        #expect(try await maildrop.contentString(at: 1).hasPrefix("Subject: two"))
        await maildrop.release()
        #expect(await worker.value)
    }

    /// A descriptor that comes with a message that takes none (a worker out of step, or hostile) fails the exchange.
    @Test func aDescriptorWithTheWrongMessageIsMalformed() throws {
        let (pop3d, workerEnd) = self.socketPair()
        let receiving = WorkerChannel(socket: pop3d)
        let sending = WorkerChannel(socket: workerEnd)
        defer {
            receiving.close()
            sending.close()
        }
        let fd = open("/dev/null", O_RDONLY)
        defer { close(fd) }
        try sending.send(.done, attaching: fd)
        #expect(throws: WorkerChannelError.malformed("a descriptor came with a message that takes none")) { try receiving.receive() }
        try sending.send(.contentFollows)
        #expect(throws: WorkerChannelError.malformed("0 descriptors with one message")) { try receiving.receive() }
    }

    /// The worker lists at most what the session will show, the oldest first.
    @Test func workerListsOnlyTheOldestUpToTheLimit() async throws {
        let fixture = try self.threeMessages()
        defer { fixture.cleanUp() }
        let (pop3d, workerEnd) = self.socketPair()
        let provider = self.workerProvider()
        let worker = Task { await MaildropWorker.serve(socket: workerEnd, provider: provider, logger: Self.logger) }
        let maildrop = try await WorkerMaildrop.open(
            socket: pop3d, user: "u", path: fixture.path, rpcPool: self.rpcPool, readPool: .singleton, logger: Self.logger,
            maximumMessages: 2
        )
        #expect(maildrop.messages.count == 2)
        #expect(try await maildrop.contentString(at: 0).hasPrefix("Subject: one"))
        try await maildrop.commit(deleting: [1])
        #expect(await worker.value)
        #expect(try fixture.list("cur").isEmpty, "message 2 (in cur/) was deleted")
        #expect(try fixture.list("new").count == 2)
    }

    /// A spool file holding `text`, read with pread as LMTP does.
    func spool(_ text: String) throws -> Int32 {
        let fd = try FileSystem.openUnnamedTemporaryFile()
        _ = Array(text.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        return fd
    }

    func deliverThroughWorker(_ path: String, quota: MaildirQuota = MaildirQuota(), text: String) async throws -> Result<String, DeliveryFailure> {
        let (pop3d, workerEnd) = self.socketPair()
        let provider = self.workerProvider()
        let worker = Task { await MaildropWorker.serve(socket: workerEnd, provider: provider, logger: Self.logger) }
        let fd = try self.spool(text)
        defer { close(fd) }
        let prefix = Array("Delivered-To: <u@example.test>\n".utf8)
        let result: Result<String, DeliveryFailure>
        do {
            result = .success(try await MaildropWorker.deliver(
                socket: pop3d, user: "u", path: path, quota: quota, maximumSize: nil,
                prefix: prefix, spool: fd, size: text.utf8.count, rpcPool: self.rpcPool
            ))
        } catch {
            result = .failure(error)
        }
        #expect(await worker.value, "the worker ends cleanly after one delivery")
        return result
    }

    @Test func workerDeliversFromTheSpoolItIsHanded() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        let name = try await self.deliverThroughWorker(fixture.path, text: "Subject: w\n\nbody\n").get()
        #expect(try fixture.read("new/" + name) == "Delivered-To: <u@example.test>\nSubject: w\n\nbody\n")
        #expect(try fixture.list("tmp").isEmpty)
    }

    @Test func workerReportsQuotaAsQuotaAndStoresNothing() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        let result = try await self.deliverThroughWorker(fixture.path, quota: MaildirQuota(storageBytes: 10), text: "Subject: big\n\n0123456789\n")
        guard case .failure(.quotaExceeded) = result else {
            Issue.record("expected quotaExceeded, got \(result)")
            return
        }
        let stored = fixture.exists("new") ? try fixture.list("new") : []
        #expect(stored.isEmpty)
    }
}
