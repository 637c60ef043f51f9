/// The client's side of RFC 2449 PIPELINING: how many of a run of commands to have sent before reading the
/// reply to command `position`. At most `window` commands are outstanding, so neither side's buffers grow with
/// the number of messages; a window of 1 is the lock-step of a server without PIPELINING.
public struct PipelineWindow: Sendable, Equatable {
    public let total: Int
    public let window: Int
    /// How many commands have been sent so far.
    public private(set) var sent = 0

    /// `window` below 1 is taken as 1.
    public init(total: Int, window: Int) {
        self.total = max(0, total)
        self.window = max(1, window)
    }

    /// The indices of the commands to send now, before the reply to command `position` (0-based) is read. Call
    /// once per position, in order; afterwards `sent` covers `position`.
    public mutating func commandsToSend(beforeReplyTo position: Int) -> Range<Int> {
        precondition(position >= 0 && position < self.total, "position outside the run")
        let end = min(self.total, position + self.window)
        let range = self.sent..<max(self.sent, end)
        self.sent = range.upperBound
        return range
    }
}
