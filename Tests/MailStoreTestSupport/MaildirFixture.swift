import Foundation
import Logging
import NIOCore
import NIOPosix

import MailStore

/// A temporary Maildir for one test, removed by `cleanUp()` (shared by the MailStore and Privileges tests).
public struct MaildirFixture: Sendable {
    public let root: String
    public let path: String

    public init() throws {
        let base = FileManager.default.temporaryDirectory.path
        self.root = base + "/MailStoreTests-" + UUID().uuidString
        self.path = self.root + "/Maildir"
        try FileManager.default.createDirectory(atPath: self.root, withIntermediateDirectories: true)
    }

    public func createLayout() throws {
        for sub in ["new", "cur", "tmp"] {
            try FileManager.default.createDirectory(atPath: self.path + "/" + sub, withIntermediateDirectories: true)
        }
    }

    public func write(_ relativePath: String, _ contents: String) throws {
        try self.write(relativePath, Array(contents.utf8))
    }

    public func write(_ relativePath: String, _ bytes: [UInt8]) throws {
        let url = URL(fileURLWithPath: self.path + "/" + relativePath)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(bytes).write(to: url)
    }

    public func read(_ relativePath: String) throws -> String {
        try String(contentsOfFile: self.path + "/" + relativePath, encoding: .utf8)
    }

    public func exists(_ relativePath: String) -> Bool {
        FileManager.default.fileExists(atPath: self.path + "/" + relativePath)
    }

    public func list(_ sub: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: self.path + "/" + sub).sorted()
    }

    public func remove(_ relativePath: String) throws {
        try FileManager.default.removeItem(atPath: self.path + "/" + relativePath)
    }

    public func move(_ from: String, _ to: String) throws {
        try FileManager.default.moveItem(atPath: self.path + "/" + from, toPath: self.path + "/" + to)
    }

    public func cleanUp() {
        try? FileManager.default.removeItem(atPath: self.root)
    }

    public static func provider() -> MaildirProvider {
        var logger = Logger(label: "MailStoreTests")
        logger.logLevel = .critical
        return MaildirProvider(threadPool: .singleton, logger: logger)
    }
}

extension Maildrop {
    /// The whole message, gathered from its chunks; also checks no chunk exceeds `chunkSize`.
    public func contentBytes(at index: Int, chunkSize: Int = 4096) async throws -> (bytes: [UInt8], chunks: Int) {
        var bytes: [UInt8] = []
        var chunks = 0
        for try await chunk in try await self.content(ofMessageAt: index, chunkSize: chunkSize) {
            precondition(chunk.readableBytes <= chunkSize && chunk.readableBytes > 0)
            bytes += chunk.readableBytesView
            chunks += 1
        }
        return (bytes, chunks)
    }

    public func contentString(at index: Int) async throws -> String {
        String(decoding: try await self.contentBytes(at: index).bytes, as: UTF8.self)
    }
}

public func hostName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    gethostname(&buffer, 255)
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The pid of a process that has already exited (for stale-lock tests).
public func deadProcessIdentifier() throws -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/true")
    try process.run()
    process.waitUntilExit()
    return process.processIdentifier
}
