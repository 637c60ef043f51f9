import Crypto
import MailStore
import NIOPosix
import SystemIO

/// When each message was first retrieved (RETR), per user, kept durably for EXPIRE (RFC 2449 §6.7): a file per
/// user in `state_dir/retrieved/`, named by the SHA-256 of the user name, one `UIDL SP seconds` line per message,
/// replaced atomically (fsync, rename, directory fsync). Written while the session still holds the maildrop lock;
/// a crash before the write only makes a message expire later, never sooner.
public struct RetrievalLog: Sendable {
    public let folder: String
    /// A log larger than this is refused as corrupt (about 40 bytes per message: over a million messages).
    public static let maximumFileSize = 64 << 20

    public init(stateFolder: String) {
        self.folder = stateFolder + "/retrieved"
    }

    func path(for user: String) -> String {
        let digest = SHA256.hash(data: Array(user.utf8))
        return self.folder + "/" + digest.map { String($0, radix: 16).leftPadded(to: 2) }.joined()
    }

    /// UIDL → first retrieval (seconds since the epoch). A missing file is an empty log; unreadable lines are
    /// skipped (the message then counts as never retrieved: it expires later, not sooner).
    public func load(user: String) throws(FileSystemError) -> [String: Int64] {
        guard let bytes = try FileSystem.readFile(self.path(for: user), limit: Self.maximumFileSize) else { return [:] }
        var result: [String: Int64] = [:]
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: " "))
            guard fields.count == 2, let seconds = Int64(String(decoding: fields[1], as: UTF8.self)) else { continue }
            result[String(decoding: fields[0], as: UTF8.self)] = seconds
        }
        return result
    }

    public func save(_ log: [String: Int64], user: String) throws(FileSystemError) {
        _ = try FileSystem.makeDirectories(self.folder, mode: 0o700)
        var text = ""
        for (uid, seconds) in log.sorted(by: { $0.key < $1.key }) { text += "\(uid) \(seconds)\n" }
        try FileSystem.atomicReplace(self.path(for: user), with: Array(text.utf8))
    }

    /// The messages of `messages` (UIDLs, by index) first retrieved `days` or more days before `now`.
    public static func expired(_ uniqueIDs: [String], log: [String: Int64], days: Int, now: Int64) -> Set<Int> {
        let cutoff = now - Int64(days) * 86_400
        return Set(uniqueIDs.indices.filter { index in log[uniqueIDs[index]].map { $0 <= cutoff } ?? false })
    }

    /// `log` with the first retrieval of `retrieved` added (an earlier time is kept) and entries for messages no
    /// longer in `remaining` dropped.
    public static func updated(_ log: [String: Int64], retrieved: [String], remaining: Set<String>, now: Int64) -> [String: Int64] {
        var result = log.filter { remaining.contains($0.key) }
        for uid in retrieved where result[uid] == nil && remaining.contains(uid) { result[uid] = now }
        return result
    }
}

extension RetrievalLog: RetrievalTimes {
    public func firstRetrievals(user: String) async throws -> [String: Int64] {
        try await NIOThreadPool.singleton.runIfActive { try self.load(user: user) }
    }

    public func recordFirstRetrievals(_ log: [String: Int64], user: String) async throws {
        try await NIOThreadPool.singleton.runIfActive { try self.save(log, user: user) }
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        self.count >= width ? self : String(repeating: "0", count: width - self.count) + self
    }
}
