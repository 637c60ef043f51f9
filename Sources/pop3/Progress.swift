import Foundation
import MailRetriever

/// A progress line on a terminal (messages and bytes), nothing otherwise.
final class Progress: FetchProgress, @unchecked Sendable {
    // @unchecked: updated from one fetch task at a time per instance; output goes through a lock.
    private let lock = NSLock()
    private var account = ""
    private var messages = 0
    private var done = 0
    private var bytes = 0
    private var received = 0
    private var lastDraw = Date.distantPast

    static func forTerminal() -> Progress? { isatty(STDERR_FILENO) == 1 ? Progress() : nil }

    func start(account: String, messages: Int, bytes: Int) {
        self.lock.withLock {
            self.account = account
            self.messages = messages
            self.bytes = bytes
            self.done = 0
            self.received = 0
        }
        self.draw(force: true)
    }

    func advance(bytes: Int) {
        self.lock.withLock { self.received += bytes }
        self.draw(force: false)
    }

    func messageDone() {
        self.lock.withLock { self.done += 1 }
        self.draw(force: false)
    }

    func finish() {
        self.draw(force: true)
        FileHandle.standardError.write(Data("\n".utf8))
    }

    private func draw(force: Bool) {
        self.lock.withLock {
            let now = Date()
            guard force || now.timeIntervalSince(self.lastDraw) > 0.1 else { return }
            self.lastDraw = now
            let fraction = self.bytes > 0 ? min(1, Double(self.received) / Double(self.bytes)) : 1
            let width = 24
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
            let line = String(format: "\r%@ [%@] %d/%d messages, %.1f/%.1f MB", self.account, bar, self.done, self.messages,
                              Double(self.received) / 1e6, Double(self.bytes) / 1e6)
            FileHandle.standardError.write(Data(line.utf8))
        }
    }
}
