import LMTPCore
import NIOCore
import Testing

/// Drives a session the way the server does, resolving recipients from a fixed list.
struct Harness {
    var session: LMTPSession
    init(maximumBadCommands: Int = 4) {
        self.session = LMTPSession(configuration: .init(hostname: "mx.test", maximumMessageSize: 1_000, maximumRecipients: 3, maximumBadCommands: maximumBadCommands))
    }
    var accounts: [String: String] = ["alice@example.org": "alice", "bob": "bob"]
    var pendingDelivery: LMTPSession.Transaction?

    mutating func send(_ line: String) -> [LMTPReply] {
        self.run(self.session.receive(line: Array(line.utf8)))
    }

    mutating func run(_ actions: [LMTPSession.Action]) -> [LMTPReply] {
        var replies: [LMTPReply] = []
        var queue = actions[...]
        while let action = queue.popFirst() {
            switch action {
            case .reply(let reply): replies.append(reply)
            case .lookUp(let address): queue.append(contentsOf: self.session.recipientLookedUp(self.accounts[address]))
            case .deliver(let transaction): self.pendingDelivery = transaction
            case .receiveData, .receiveChunk, .close: break
            }
        }
        return replies
    }
}

@Suite struct LMTPSessionTests {
    @Test func lhloAnnouncesTheExtensionsMTAsUse() {
        var h = Harness()
        #expect(h.session.greeting.code == 220)
        let replies = h.send("LHLO client.test")
        #expect(replies.count == 1)
        #expect(replies[0].code == 250)
        #expect(replies[0].lines == ["mx.test", "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SIZE 1000", "CHUNKING", "SMTPUTF8"])
    }

    @Test func oneReplyPerAcceptedRecipientInOrderDuplicatesIncluded() {
        // docs/security-cases.md 55
        var h = Harness()
        _ = h.send("LHLO c")
        #expect(h.send("MAIL FROM:<sender@x.test>") == [.senderOK])
        #expect(h.send("RCPT TO:<alice@example.org>") == [.recipientOK])
        #expect(h.send("RCPT TO:<nobody@example.org>") == [.unknownRecipient])
        #expect(h.send("RCPT TO:<alice@example.org>") == [.recipientOK])
        #expect(h.send("DATA") == [.startData])
        #expect(h.run(h.session.contentEnded(octets: 10, tooLarge: false)) == [])
        let transaction = try! #require(h.pendingDelivery)
        #expect(transaction.recipients.map(\.account) == ["alice", "alice"])
        #expect(transaction.sender == "sender@x.test")
        let replies = h.run(h.session.delivered([.delivered, .quotaExceeded]))
        #expect(replies == [.delivered, .quotaExceeded])
        #expect(!h.session.hasOpenTransaction)
    }

    @Test func dataWithoutRecipientsIs503AndOrderIsEnforced() {
        var h = Harness(maximumBadCommands: 10)
        #expect(h.send("MAIL FROM:<a@b>") == [.needLHLO])
        _ = h.send("LHLO c")
        #expect(h.send("RCPT TO:<bob>") == [.needMail])
        #expect(h.send("DATA") == [.needMail])
        _ = h.send("MAIL FROM:<>")
        #expect(h.send("MAIL FROM:<>") == [.nestedMail])
        #expect(h.send("RCPT TO:<ghost@x>") == [.unknownRecipient])
        #expect(h.send("DATA") == [.needRecipient])
    }

    @Test func recipientsPastTheLimitGet452() {
        var h = Harness()
        _ = h.send("LHLO c")
        _ = h.send("MAIL FROM:<>")
        for _ in 0..<3 { #expect(h.send("RCPT TO:<bob>") == [.recipientOK]) }
        #expect(h.send("RCPT TO:<bob>") == [.tooManyRecipients])
    }

    @Test func announcedSizeOverTheLimitIsRefusedAtMail() {
        var h = Harness()
        _ = h.send("LHLO c")
        #expect(h.send("MAIL FROM:<a@b> SIZE=1001") == [.messageTooLarge])
        #expect(h.send("MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME") == [.senderOK])
    }

    @Test func tooLargeContentGets552ForEveryRecipientAndStoresNothing() {
        var h = Harness()
        _ = h.send("LHLO c")
        _ = h.send("MAIL FROM:<a@b>")
        _ = h.send("RCPT TO:<bob>")
        _ = h.send("RCPT TO:<alice@example.org>")
        _ = h.send("DATA")
        #expect(h.run(h.session.contentEnded(octets: 5_000, tooLarge: true)) == [.messageTooLarge, .messageTooLarge])
        #expect(h.pendingDelivery == nil)
        #expect(!h.session.hasOpenTransaction)
    }

    @Test func bdatChunksThenLastDelivers() {
        var h = Harness()
        _ = h.send("LHLO c")
        _ = h.send("MAIL FROM:<a@b>")
        _ = h.send("RCPT TO:<bob>")
        #expect(h.session.receive(line: Array("BDAT 5".utf8)) == [.receiveChunk(size: 5, discard: false)])
        let first = h.run(h.session.contentEnded(octets: 5, tooLarge: false))
        #expect(first.map(\.code) == [250])
        #expect(h.send("DATA") == [.mixedDataAndBDAT])
        #expect(h.session.receive(line: Array("BDAT 0 LAST".utf8)) == [.receiveChunk(size: 0, discard: false)])
        _ = h.run(h.session.contentEnded(octets: 0, tooLarge: false))
        #expect(h.pendingDelivery?.recipients.map(\.account) == ["bob"])
    }

    @Test func bdatWithoutRecipientsIsReadAndRefused() {
        var h = Harness()
        _ = h.send("LHLO c")
        #expect(h.session.receive(line: Array("BDAT 3 LAST".utf8)) == [.receiveChunk(size: 3, discard: true)])
        #expect(h.run(h.session.contentEnded(octets: 3, tooLarge: false)) == [.needMail])
        #expect(h.session.acceptsCommands)
    }

    @Test func badCommandsPastTheLimitClose() {
        var h = Harness()
        for _ in 0..<4 { #expect(h.send("EHLO x") == [.useLHLO]) }
        let last = h.session.receive(line: Array("XYZZY".utf8))
        #expect(last == [.reply(.tooManyBadCommands), .close])
        #expect(h.session.isClosed)
    }

    @Test func nonASCIIAddressesNeedSMTPUTF8() {
        var h = Harness()
        h.accounts["jörg@example.org"] = "joerg"
        _ = h.send("LHLO c")
        #expect(h.send("MAIL FROM:<zoë@x.test>") == [.utf8Required])
        #expect(h.send("MAIL FROM:<zoë@x.test> SMTPUTF8") == [.senderOK])
        #expect(h.send("RCPT TO:<jörg@example.org>") == [.recipientOK])
    }

    @Test func repliesNeverEchoTheAddress() {
        var h = Harness()
        _ = h.send("LHLO c")
        _ = h.send("MAIL FROM:<evil<script>@x>")
        let replies = h.send("RCPT TO:<nobody-secret@x>")
        #expect(!replies.flatMap(\.lines).joined().contains("secret"))
    }

    @Test func rsetAndQuit() {
        var h = Harness()
        _ = h.send("LHLO c")
        _ = h.send("MAIL FROM:<a@b>")
        #expect(h.send("RSET") == [.reset])
        #expect(!h.session.hasOpenTransaction)
        #expect(h.session.receive(line: Array("QUIT".utf8)) == [.reply(.bye), .close])
    }

    @Test func replyEncodingWithEnhancedCodes() {
        var buffer = ByteBuffer()
        LMTPReply(250, nil, "mx", "PIPELINING").write(into: &buffer)
        LMTPReply.unknownRecipient.write(into: &buffer)
        #expect(String(buffer: buffer) == "250-mx\r\n250 PIPELINING\r\n550 5.1.1 No such user here\r\n")
    }
}

@Suite struct LMTPCommandTests {
    @Test(arguments: [
        ("MAIL FROM:<a@b.c>", LMTPCommand.mail(from: "a@b.c", parameters: .init())),
        ("mail from: <a@b.c>", LMTPCommand.mail(from: "a@b.c", parameters: .init())),
        ("MAIL FROM:<>", LMTPCommand.mail(from: "", parameters: .init())),
        ("MAIL FROM:<@relay.x,@r2.y:a@b.c>", LMTPCommand.mail(from: "a@b.c", parameters: .init())),
        ("RCPT TO:<\"john doe\"@b.c>", LMTPCommand.rcpt(to: "\"john doe\"@b.c")),
        ("BDAT 100 LAST", LMTPCommand.bdat(size: 100, last: true)),
        ("bdat 7", LMTPCommand.bdat(size: 7, last: false)),
        ("DATA", LMTPCommand.data),
        ("NOOP anything", LMTPCommand.noop),
    ])
    func parses(_ line: String, _ expected: LMTPCommand) {
        #expect(LMTPCommand.parse(Array(line.utf8)) == .success(expected))
    }

    @Test(arguments: [
        "MAIL FROM:a@b", "MAIL FROM:<a@b", "MAIL TO:<a@b>", "RCPT TO:<>", "RCPT TO:<a b@c>",
        "RCPT TO:<a@b@c>", "BDAT", "BDAT -1", "BDAT 1 FIRST", "BDAT 99999999999", "DATA now", "LHLO",
        "MAIL FROM:<a@b> SIZE=x", "MAIL FROM:<a\u{01}@b>", "QUIT now",
    ])
    func refuses(_ line: String) {
        #expect(LMTPCommand.parse(Array(line.utf8)) == .failure(.syntax))
    }

    @Test func unsupportedParametersAre555() {
        #expect(LMTPCommand.parse(Array("MAIL FROM:<a@b> RET=FULL".utf8)) == .failure(.unsupportedParameter))
        #expect(LMTPCommand.parse(Array("RCPT TO:<a@b> NOTIFY=NEVER".utf8)) == .failure(.unsupportedParameter))
        #expect(LMTPCommand.parse(Array("MAIL FROM:<a@b> BODY=BINARYMIME".utf8)) == .failure(.unsupportedParameter))
    }

    @Test func controlBytesAndInvalidUTF8AreSyntaxErrors() {
        #expect(LMTPCommand.parse([0x4E, 0x4F, 0x4F, 0x50, 0x00]) == .failure(.syntax))
        #expect(LMTPCommand.parse([0x4E, 0x4F, 0x4F, 0x50, 0x20, 0xFF]) == .failure(.syntax))
        #expect(LMTPCommand.parse(Array("FOO".utf8)) == .failure(.unknown))
    }

    @Test func pathsLongerThanTheLimitAreRefused() {
        let long = String(repeating: "a", count: 251) + "@b.c"  // 255 + "<>" = 257 > 256
        #expect(LMTPCommand.parse(Array("RCPT TO:<\(long)>".utf8)) == .failure(.syntax))
    }
}
