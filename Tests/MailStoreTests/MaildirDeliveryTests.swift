import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Synchronization
import SystemIO
import MailStoreTestSupport
import Testing

@testable import MailStore

@Suite("Maildir delivery")
struct MaildirDeliveryTests {
    @Test func deliverWritesSizedNameDurablyAndLeavesTmpEmpty() throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        let message = "Subject: hi\n\nline\r\nlast\n"
        let name = try MaildirDelivery.deliver(Array(message.utf8), toMaildir: fixture.path)
        #expect(name.hasSuffix(",S=24,W=27"))
        #expect(name.range(of: #"^[0-9]+\.M[0-9]+P[0-9]+Q[0-9]+\.[^/:]+,S=24,W=27$"#, options: .regularExpression) != nil)
        #expect(try fixture.list("new") == [name])
        #expect(try fixture.list("tmp").isEmpty)
        #expect(try fixture.read("new/" + name) == message)
        let attributes = try FileManager.default.attributesOfItem(atPath: fixture.path)
        #expect((attributes[.posixPermissions] as? Int) == 0o700)
        let other = try MaildirDelivery.deliver(ByteBuffer(string: "x"), toMaildir: fixture.path)
        #expect(other != name && other.hasSuffix(",S=1,W=1"))
    }

    @Test func streamingDeliveryFromFileDescriptor() throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        var body = ""
        for number in 0..<20_000 { body += "line \(number)\n" }
        let source = fixture.root + "/input"
        try Data(body.utf8).write(to: URL(fileURLWithPath: source))
        let fd = open(source, O_RDONLY)
        defer { close(fd) }
        let name = try MaildirDelivery.deliver(readingFrom: fd, toMaildir: fixture.path, maximumSize: nil)
        #expect(name.hasSuffix(",S=\(body.utf8.count),W=\(body.utf8.count + 20_000)"))
        #expect(try fixture.read("new/" + name) == body)
        #expect(try fixture.list("tmp").isEmpty)
    }

    @Test func oversizeStreamingDeliveryStoresNothing() throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        let source = fixture.root + "/input"
        try Data(repeating: 0x41, count: 100_000).write(to: URL(fileURLWithPath: source))
        let fd = open(source, O_RDONLY)
        defer { close(fd) }
        #expect(throws: DeliveryFailure.tooLarge("message too large (limit 65000 bytes)")) {
            try MaildirDelivery.deliver(readingFrom: fd, toMaildir: fixture.path, maximumSize: 65_000)
        }
        #expect(try fixture.list("new").isEmpty)
        #expect(try fixture.list("tmp").isEmpty)
    }

    @Test func uniqueNamesEscapeTheHostName() {
        #expect(MaildirName.escapedHostname("a/b:c") == "a\\057b\\072c")
        let names = Set((0..<100).map { _ in MaildirDelivery.uniqueName() })
        #expect(names.count == 100)
    }

    /// docs/security-cases.md 56: no success before durability. fsync failing on the message file or on `new/` (EIO,
    /// injected) makes the delivery fail, and a failed delivery leaves nothing behind: no file in new/ that a retry
    /// would duplicate, nothing in tmp/.
    @Test(arguments: ["/tmp/", "/new"])
    func failedFsyncIsAFailedDeliveryThatStoresNothing(_ where: String) throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        let target = fixture.path + `where`
        FaultInjection.shared.arm("fsync", under: target, errno: EIO)
        defer { FaultInjection.shared.disarm(under: target) }
        #expect(throws: MaildirDeliveryError.self) { try MaildirDelivery.deliver(Array("Subject: x\n\nbody\n".utf8), toMaildir: fixture.path) }
        #expect(try fixture.list("new").isEmpty)
        #expect(try fixture.list("tmp").isEmpty)
        FaultInjection.shared.disarm(under: target)
        // Once the fault is gone, delivery works again.
        _ = try MaildirDelivery.deliver(Array("Subject: x\n\nbody\n".utf8), toMaildir: fixture.path)
        #expect(try fixture.list("new").count == 1)
    }

    /// docs/security-cases.md 58: many deliveries at once from one process (same pid, many threads) into one Maildir. Every
    /// one gets its own name (time, µs, pid, a per-process counter; published with link(), which never replaces),
    /// none is overwritten, and no name holds `/` or `:` or starts with a dot.
    @Test func concurrentDeliveriesFromOneProcessNeverCollide() throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        let count = 2_000
        // A pthread lock: ThreadSanitizer cannot see the stdlib Mutex's contended path on Linux (see ConcurrencyLimiter).
        let names = NIOLockedValueBox<[String]>([])
        let failures = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: count) { index in
            do {
                let name = try MaildirDelivery.deliver(Array("Subject: \(index)\n\nbody \(index)\n".utf8), toMaildir: fixture.path)
                names.withLockedValue { $0.append(name) }
            } catch {
                failures.add(1, ordering: .relaxed)
            }
        }
        #expect(failures.load(ordering: .relaxed) == 0)
        let delivered = names.withLockedValue { $0 }
        #expect(Set(delivered).count == count)
        #expect(try fixture.list("new").count == count)
        #expect(try fixture.list("tmp").isEmpty)
        #expect(delivered.allSatisfy { !$0.contains("/") && !$0.contains(":") && !$0.hasPrefix(".") })
        var bodies = Set<String>()
        for name in try fixture.list("new") { bodies.insert(try fixture.read("new/" + name)) }
        #expect(bodies == Set((0..<count).map { "Subject: \($0)\n\nbody \($0)\n" }), "a message was overwritten or lost")
    }
}
