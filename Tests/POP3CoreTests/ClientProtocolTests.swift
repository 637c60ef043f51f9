import Testing

@testable import POP3Core

/// The client's side of the protocol, without sockets: listings, capabilities, multi-line lines and the
/// pipelining window, as `ServerSessionTests` does for the server's side.
@Suite struct ClientProtocolTests {
    @Test(arguments: [
        ("2 320", DropListing(count: 2, size: 320)),
        ("0 0", DropListing(count: 0, size: 0)),
        ("2 320 extra words", DropListing(count: 2, size: 320)),
    ])
    func dropListing(text: String, expected: DropListing) throws {
        #expect(try DropListing.parse(text) == expected)
    }

    @Test(arguments: ["", "2", "-1 5", "+2 5", "2 x", "two 320", "99999999999999999999 1", "2 320000000000000000000"])
    func malformedDropListing(text: String) {
        #expect(throws: ListingParseError.malformedDropListing) { try DropListing.parse(text) }
    }

    @Test(arguments: [
        ("1 120", ScanListing(number: 1, size: 120)),
        ("7 0", ScanListing(number: 7, size: 0)),
        ("3 200 more", ScanListing(number: 3, size: 200)),
    ])
    func scanListing(line: String, expected: ScanListing) throws {
        #expect(try ScanListing.parse(Array(line.utf8)) == expected)
    }

    @Test(arguments: ["0 120", "1", "-1 5", "1 -5", "x 1", "1 x", "", " ", "18446744073709551617 1"])
    func malformedScanListing(line: String) {
        #expect(throws: ListingParseError.malformedScanListing) { try ScanListing.parse(Array(line.utf8)) }
    }

    @Test func uniqueIDListing() throws {
        let listing = try UniqueIDListing.parse(Array("4 whqtswO00WBw418f9t5JxYwZ".utf8))
        #expect(listing.number == 4)
        #expect(listing.uid.value == "whqtswO00WBw418f9t5JxYwZ")
    }

    /// Two spaces, a third field, an id of 71 characters, a control or non-ASCII byte: each malformed.
    @Test(arguments: [
        "4  abc", "4 abc def", "4", "0 abc", "x abc", "4 " + String(repeating: "a", count: 71), "4 a\u{7F}b", "4 äb", "4 ",
    ])
    func malformedUniqueIDListing(line: String) {
        #expect(throws: ListingParseError.malformedUniqueIDListing) { try UniqueIDListing.parse(Array(line.utf8)) }
    }

    @Test func duplicateUniqueIDIsRefused() throws {
        var collector = UniqueIDListing.Collector()
        try collector.add(Array("1 a".utf8))
        try collector.add(Array("2 b".utf8))
        #expect(throws: ListingParseError.duplicateUniqueID) { try collector.add(Array("3 a".utf8)) }
        #expect(collector.listings.map(\.uid.value) == ["a", "b"])
    }

    @Test func capabilities() {
        let capabilities = ServerCapabilities(rawLines: [
            "TOP", "user", "SASL scram-sha-256-plus SCRAM-SHA-256 PLAIN", "Pipelining", "STLS", "IMPLEMENTATION \u{1B}[31mx",
        ].map { Array($0.utf8) })
        #expect(capabilities.saslMechanisms == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "PLAIN"])
        #expect(capabilities.pipelining)
        #expect(capabilities.stls)
        #expect(capabilities.userPass)
        #expect(capabilities.announcesUser)
        // Server text is sanitised before anyone prints it.
        #expect(!capabilities.lines.joined().contains("\u{1B}"))
    }

    @Test func capabilitiesOfAServerWithoutCAPA() {
        let none = ServerCapabilities()
        #expect(none.userPass, "RFC 1939 servers do not list USER; it is assumed")
        #expect(!none.announcesUser)
        #expect(!none.pipelining)
        #expect(none.saslMechanisms.isEmpty)
        let saslOnly = ServerCapabilities(lines: ["SASL PLAIN"])
        #expect(!saslOnly.userPass, "a CAPA without USER means USER/PASS is not offered")
        // "SASL" alone, or a capability that merely starts with the letters, announces no mechanism.
        #expect(ServerCapabilities(lines: ["SASL", "SASLX PLAIN"]).saslMechanisms.isEmpty)
        #expect(!ServerCapabilities(lines: ["PIPELINING-NOT"]).pipelining)
    }

    @Test(arguments: [
        (".", MultiLineReplyLine.terminator),
        ("..", .content(Array(".".utf8))),
        ("..foo", .content(Array(".foo".utf8))),
        (".foo", .content(Array("foo".utf8))),
        ("foo", .content(Array("foo".utf8))),
        ("", .content([])),
    ])
    func multiLineReplyLine(line: String, expected: MultiLineReplyLine) {
        #expect(MultiLineReplyLine(Array(line.utf8)) == expected)
    }

    /// Which commands go out before each reply is read, for every total and window up to 6: never more than the
    /// window outstanding, every command sent once and in order, and the reply read only after its command.
    @Test func pipelineWindowKeepsAtMostWindowOutstanding() {
        for total in 1...6 {
            for window in 0...7 {
                var pipeline = PipelineWindow(total: total, window: window)
                var sentOrder: [Int] = []
                for position in 0..<total {
                    sentOrder += pipeline.commandsToSend(beforeReplyTo: position)
                    #expect(sentOrder.count > position, "the reply to \(position) is read before its command is sent")
                    #expect(sentOrder.count - position <= max(1, window))
                    #expect(sentOrder.count == min(total, position + max(1, window)))
                }
                #expect(sentOrder == Array(0..<total))
            }
        }
    }

    @Test func lockStepWithoutPipelining() {
        var pipeline = PipelineWindow(total: 3, window: 1)
        #expect(pipeline.commandsToSend(beforeReplyTo: 0) == 0..<1)
        #expect(pipeline.commandsToSend(beforeReplyTo: 1) == 1..<2)
        #expect(pipeline.commandsToSend(beforeReplyTo: 2) == 2..<3)
    }

    @Test func windowOfFourOverTen() {
        var pipeline = PipelineWindow(total: 10, window: 4)
        #expect(pipeline.commandsToSend(beforeReplyTo: 0) == 0..<4)
        #expect(pipeline.commandsToSend(beforeReplyTo: 1) == 4..<5)
        for position in 2..<7 { _ = pipeline.commandsToSend(beforeReplyTo: position) }
        #expect(pipeline.sent == 10)
        #expect(pipeline.commandsToSend(beforeReplyTo: 7).isEmpty)
    }
}
