import Foundation
import NIOCore
import SystemIO

@testable import MailRetriever

/// A fresh directory under the system temp directory, removed on deinit.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array((NSTemporaryDirectory() + "/mailretriever-test.XXXXXX").utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw FileSystemError("mkdtemp", path: "/tmp", errno: errno)
        }
        path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func file(_ name: String) -> String { path + "/" + name }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }
}

let testKey = AccountKey(user: "alice@corp", host: "Mail.Example.com", port: 995)

func buffer(_ text: String) -> ByteBuffer {
    ByteBuffer(string: text)
}

func contents(_ path: String) throws -> String {
    String(decoding: try FileSystem.readFile(path) ?? [], as: UTF8.self)
}

func writeFile(_ path: String, _ text: String, mode: mode_t = 0o600) throws {
    let fd = try FileSystem.open(path, O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
    defer { FileSystem.close(fd) }
    try FileSystem.write(fd, Array(text.utf8), path: path)
    fchmod(fd, mode)
}

func appendFile(_ path: String, _ text: String) throws {
    let fd = try FileSystem.open(path, O_WRONLY | O_APPEND)
    defer { FileSystem.close(fd) }
    try FileSystem.write(fd, Array(text.utf8), path: path)
}

/// Delivers one message given as wire-form chunks.
func deliver(_ chunks: [String], uid: String, to destination: any MessageDestination, journal: UIDLJournal) throws {
    let sink = try destination.begin(uid: uid)
    for chunk in chunks { try sink.write(buffer(chunk)) }
    try sink.commit()
    try destination.flush()
    try journal.markDelivered(uid)
}
