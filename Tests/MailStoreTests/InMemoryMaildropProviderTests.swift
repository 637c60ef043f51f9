import MailStoreTestSupport
import Testing

@testable import MailStore

@Suite("In-memory maildrop provider")
struct InMemoryMaildropProviderTests {
    @Test func basicSemantics() async throws {
        let provider = InMemoryMaildropProvider()
        provider.add(user: "u", messages: [Array("a\nb\n".utf8), Array("c\r\n".utf8), Array("ddd".utf8)])
        let maildrop = try await provider.openMaildrop(user: "u", path: "/ignored", owner: nil)
        #expect(maildrop.messages.map(\.size) == [6, 3, 3])
        #expect(Set(maildrop.messages.map(\.uniqueID)).count == 3)
        await #expect(throws: MaildropError.inUse) { _ = try await provider.openMaildrop(user: "u", path: "/ignored", owner: nil) }

        provider.add(user: "u", messages: [Array("late".utf8)])
        #expect(maildrop.messages.count == 3)
        let (bytes, chunks) = try await maildrop.contentBytes(at: 0, chunkSize: 3)
        #expect(bytes == Array("a\nb\n".utf8) && chunks == 2)

        provider.remove(user: "u", uniqueID: maildrop.messages[2].uniqueID)
        await #expect(throws: MaildropError.messageGone) { _ = try await maildrop.content(ofMessageAt: 2, chunkSize: 3) }

        try await maildrop.commit(deleting: [0, 2])
        #expect(provider.messages(of: "u") == [Array("c\r\n".utf8), Array("late".utf8)])
        let again = try await provider.openMaildrop(user: "u", path: "/ignored", owner: nil)
        #expect(again.messages.count == 2)
        #expect(again.messages[0] == maildrop.messages[1])
        await again.release()
        await again.release()
        try await again.commit(deleting: [0])  // released: nothing deleted
        #expect(provider.messages(of: "u").count == 2)
        #expect(!provider.isLocked(user: "u"))
    }
}
