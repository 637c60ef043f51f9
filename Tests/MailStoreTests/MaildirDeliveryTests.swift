import Foundation
import NIOCore
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
        #expect(throws: MaildropError.permanent("message too large")) {
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
}
