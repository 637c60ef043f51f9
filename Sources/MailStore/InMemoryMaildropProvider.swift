import NIOCore
import POP3Core
import Synchronization

/// A maildrop store in memory, for tests: the same locking and snapshot semantics as `MaildirProvider`, keyed by
/// user name (the path is ignored).
public final class InMemoryMaildropProvider: MaildropProvider {
    struct StoredMessage: Sendable {
        var uniqueID: String
        var bytes: [UInt8]
    }

    struct Mailbox: Sendable {
        var messages: [StoredMessage] = []
        var nextNumber = 1
        var locked = false
    }

    let mailboxes = Mutex<[String: Mailbox]>([:])

    public init() {}

    /// Appends messages to `user`'s maildrop (as a delivery would; open sessions do not see them).
    public func add(user: String, messages: [[UInt8]]) {
        self.mailboxes.withLock { boxes in
            var box = boxes[user] ?? Mailbox()
            for bytes in messages {
                box.messages.append(StoredMessage(uniqueID: "M\(box.nextNumber)", bytes: bytes))
                box.nextNumber += 1
            }
            boxes[user] = box
        }
    }

    /// What `user`'s maildrop holds now (after commits).
    public func messages(of user: String) -> [[UInt8]] {
        self.mailboxes.withLock { $0[user]?.messages.map(\.bytes) ?? [] }
    }

    /// Removes a message behind the session's back (to test `.messageGone`).
    public func remove(user: String, uniqueID: String) {
        self.mailboxes.withLock { $0[user]?.messages.removeAll { $0.uniqueID == uniqueID } }
    }

    /// Whether `user`'s maildrop is locked by a session.
    public func isLocked(user: String) -> Bool {
        self.mailboxes.withLock { $0[user]?.locked ?? false }
    }

    /// Memory has no owner: `owner` is not used.
    public func openMaildrop(user: String, path: String, owner: MailOwner?) async throws -> any Maildrop {
        let snapshot = try self.mailboxes.withLock { boxes throws(MaildropError) -> [StoredMessage] in
            var box = boxes[user] ?? Mailbox()
            guard !box.locked else { throw .inUse }
            box.locked = true
            boxes[user] = box
            return box.messages
        }
        return InMemoryMaildrop(provider: self, user: user, snapshot: snapshot)
    }
}

final class InMemoryMaildrop: Maildrop {
    let messages: [MaildropMessage]
    private let uniqueIDs: [String]
    private let provider: InMemoryMaildropProvider
    private let user: String
    private let released = Mutex(false)

    init(provider: InMemoryMaildropProvider, user: String, snapshot: [InMemoryMaildropProvider.StoredMessage]) {
        self.provider = provider
        self.user = user
        self.uniqueIDs = snapshot.map(\.uniqueID)
        self.messages = snapshot.map { MaildropMessage(uniqueID: $0.uniqueID, size: MessageSize.pop3Size(of: $0.bytes)) }
    }

    func content(ofMessageAt index: Int, chunkSize: Int) async throws -> MessageContent {
        guard self.uniqueIDs.indices.contains(index) else { throw MaildropError.permanent("no such message") }
        let id = self.uniqueIDs[index]
        let bytes = self.provider.mailboxes.withLock { boxes in
            boxes[self.user]?.messages.first { $0.uniqueID == id }?.bytes
        }
        guard let bytes else { throw MaildropError.messageGone }
        return MessageContent(bytes: bytes, chunkSize: chunkSize)
    }

    func commit(deleting indices: Set<Int>) async throws {
        guard !self.released.withLock({ $0 }) else { return }
        let doomed = Set(indices.compactMap { self.uniqueIDs.indices.contains($0) ? self.uniqueIDs[$0] : nil })
        self.provider.mailboxes.withLock { boxes in
            boxes[self.user]?.messages.removeAll { doomed.contains($0.uniqueID) }
        }
        await self.release()
    }

    func release() async {
        self.releaseNow()
    }

    private func releaseNow() {
        let wasReleased = self.released.withLock { released in
            defer { released = true }
            return released
        }
        guard !wasReleased else { return }
        self.provider.mailboxes.withLock { $0[self.user]?.locked = false }
    }

    deinit {
        self.releaseNow()
    }
}
