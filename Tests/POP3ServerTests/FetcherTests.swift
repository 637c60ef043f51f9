import Foundation
import Logging
import MailRetriever
import MailStore
import NIOPosix
import POP3Client
import Testing

@testable import POP3Server

/// The retriever's rule end to end against the real server: a message is DELE'd only once its local copy is
/// durable and journaled, and retention follows the clock passed in.
@Suite(.serialized) struct FetcherTests {
    /// A fetch of `user` from `server` into `destination`, with its state (journal, lock) in `folder/state`.
    static func fetch(
        _ server: TestServer,
        user: String,
        into destination: LocalDestination,
        retention: RetentionPolicy,
        folder: String,
        now: Int64 = 1_800_000_000
    ) async throws -> FetchSummary {
        let passwordFile = folder + "/password"
        if !FileManager.default.fileExists(atPath: passwordFile) {
            let created = FileManager.default.createFile(
                atPath: passwordFile,
                contents: Data((TestServer.users[user]! + "\n").utf8),
                attributes: [.posixPermissions: 0o600]
            )
            #expect(created)
        }
        try FileManager.default.createDirectory(atPath: folder + "/state", withIntermediateDirectories: true)
        let job = FetchJob(
            name: user,
            url: try POP3URL.parse("pop3s://\(user)@localhost:\(server.pop3sPort)"),
            password: .file(passwordFile),
            trust: .caFile(server.certificate),
            security: .implicitTLS,
            destination: destination,
            retention: retention,
            timeout: 30
        )
        let fetcher = Fetcher(
            job: job,
            stateDirectory: folder + "/state",
            eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
            clock: FetchClock(unixSeconds: { now }, monotonic: { .now }),
            logger: Logger(label: "fetcher-test")
        )
        return await fetcher.run()
    }

    static func temporaryFolder() throws -> String {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fetcher-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        return folder
    }

    static func storedCount(_ maildir: String) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: maildir + "/new")) ?? []).count
            + ((try? FileManager.default.contentsOfDirectory(atPath: maildir + "/cur")) ?? []).count
    }

    /// `STAT`'s message count on the server.
    static func onServer(_ server: TestServer, _ user: String) async throws -> Int {
        let client = try await server.login(user)
        let stat = try await client.command("STAT")
        _ = try await client.command("QUIT")
        return Int(stat.split(separator: " ")[1])!
    }

    @Test func deletesOnlyWhatIsStored() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let folder = try Self.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        for index in 1...3 { try server.deliver("alice", "Subject: \(index)\n\nbody \(index)\n") }

        // A destination that cannot store (its path is a file): the fetch fails and nothing is deleted.
        #expect(FileManager.default.createFile(atPath: folder + "/not-a-folder", contents: Data()))
        let failed = try await Self.fetch(server, user: "alice", into: .maildir(folder + "/not-a-folder"), retention: .deleteAfterDownload, folder: folder)
        #expect(failed.error != nil)
        #expect(failed.failure == .localStorage && failed.temporary == false)
        #expect(failed.deleted == 0)
        #expect(try await Self.onServer(server, "alice") == 3)

        let summary = try await Self.fetch(server, user: "alice", into: .maildir(folder + "/Maildir"), retention: .deleteAfterDownload, folder: folder)
        #expect(summary.error == nil)
        #expect(summary.fetched == 3 && summary.deleted == 3)
        #expect(Self.storedCount(folder + "/Maildir") == 3)
        #expect(try await Self.onServer(server, "alice") == 0)
    }

    /// keep_days counts from when this client first saw the message, on the clock passed in.
    @Test func keepDaysFollowsTheInjectedClock() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let folder = try Self.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try server.deliver("bob", "Subject: kept\n\nfor two days\n")
        let start: Int64 = 1_800_000_000

        let first = try await Self.fetch(server, user: "bob", into: .maildir(folder + "/Maildir"), retention: .keepDays(2), folder: folder, now: start)
        #expect(first.error == nil && first.fetched == 1 && first.deleted == 0)
        let early = try await Self.fetch(server, user: "bob", into: .maildir(folder + "/Maildir"), retention: .keepDays(2), folder: folder, now: start + 2 * 86_400 - 1)
        #expect(early.error == nil && early.fetched == 0 && early.deleted == 0)
        let due = try await Self.fetch(server, user: "bob", into: .maildir(folder + "/Maildir"), retention: .keepDays(2), folder: folder, now: start + 2 * 86_400)
        #expect(due.error == nil && due.fetched == 0 && due.deleted == 1)
        #expect(Self.storedCount(folder + "/Maildir") == 1, "stored once, never twice")
        #expect(try await Self.onServer(server, "bob") == 0)
    }

    /// A body longer than LIST announced, or one that misses its deadline, aborts the download.
    @Test func messageBoundUsesTheGivenClock() throws {
        let start = ContinuousClock.now
        var bound = MessageBound(announced: 1_000, timeout: 10, now: start)
        try bound.receive(500, message: 1, now: start + .seconds(9))
        #expect(throws: POP3ClientError.self) { try bound.receive(1, message: 1, now: start + .seconds(11)) }
        var long = MessageBound(announced: 1_000, timeout: 10, now: start)
        #expect(throws: POP3ClientError.self) { try long.receive(long.limit + 1, message: 1, now: start) }
    }
}
