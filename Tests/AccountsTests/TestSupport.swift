import Logging
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A fresh directory under /tmp, removed (with its files) when `body` returns.
func withTemporaryDirectory<Result>(_ body: (String) async throws -> Result) async throws -> Result {
    var template = Array("/tmp/accounts-tests.XXXXXX".utf8CString)
    let created = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    let directory = String(cString: try #require(created))
    defer { removeTree(directory) }
    return try await body(directory)
}

func withTemporaryDirectory<Result>(_ body: (String) throws -> Result) throws -> Result {
    var template = Array("/tmp/accounts-tests.XXXXXX".utf8CString)
    let created = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    let directory = String(cString: try #require(created))
    defer { removeTree(directory) }
    return try body(directory)
}

private func removeTree(_ directory: String) {
    guard let dir = opendir(directory) else { return }
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) {
            String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
        }
        if name == "." || name == ".." { continue }
        unlink("\(directory)/\(name)")
    }
    closedir(dir)
    rmdir(directory)
}

func writeFile(_ path: String, _ contents: String, mode: mode_t = 0o600) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)
    #expect(fd >= 0, "open \(path)")
    guard fd >= 0 else { return }
    defer { close(fd) }
    let bytes = Array(contents.utf8)
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    #expect(written == bytes.count)
}

func readFile(_ path: String) throws -> String {
    let fd = open(path, O_RDONLY)
    try #require(fd >= 0, "open \(path)")
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count <= 0 { break }
        bytes += buffer[..<count]
    }
    return String(decoding: bytes, as: UTF8.self)
}

func fileMode(_ path: String) -> mode_t? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return st.st_mode & 0o7777
}

/// Sets a file's mtime explicitly, so a reload test does not depend on the clock's granularity.
func setModificationTime(_ path: String, seconds: Int) {
    var times = [timespec(tv_sec: seconds, tv_nsec: 0), timespec(tv_sec: seconds, tv_nsec: 0)]
    let result = utimensat(AT_FDCWD, path, &times, 0)
    #expect(result == 0)
}

/// Collects every log line (message and metadata) so tests can check what reached the log.
final class LogCapture: Sendable {
    private let lines = Mutex<[(Logger.Level, String)]>([])

    var logger: Logger {
        Logger(label: "accounts-tests") { _ in CapturingLogHandler(capture: self) }
    }

    func append(_ level: Logger.Level, _ line: String) {
        self.lines.withLock { $0.append((level, line)) }
    }

    var all: [(level: Logger.Level, text: String)] {
        self.lines.withLock { $0.map { (level: $0.0, text: $0.1) } }
    }

    func count(_ level: Logger.Level) -> Int {
        self.all.filter { $0.level == level }.count
    }
}

struct CapturingLogHandler: LogHandler {
    let capture: LogCapture
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    func log(event: LogEvent) {
        let merged = self.metadata.merging(event.metadata ?? [:]) { $1 }
        let rendered = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        self.capture.append(event.level, "\(event.message) \(rendered)")
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }
}
