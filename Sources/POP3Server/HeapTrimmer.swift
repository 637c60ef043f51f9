import Logging
import ServiceLifecycle

#if canImport(Glibc)
    import CMalloc
    import Glibc
#endif

/// When to give freed heap memory back to the system: after the open connections fell well below the peak they
/// reached since the last trim.
///
/// glibc keeps the memory that a burst of connections freed in its arenas, so without this pop3d's RSS stays near
/// its peak long after the load went (the 1800-second soak: 331 MiB after every connection closed, against a
/// 46 MiB baseline). `malloc_trim(0)` returns the free pages of every arena; it costs a walk of the heap, so it runs
/// only when it is worth it: the open connections are at most half the peak and at least `minimumDrop` fewer. A
/// trim is followed by one more at the next check if no more connections are open by then, for what the
/// connections still closing during the first one freed after it.
struct HeapTrimPolicy {
    /// Connections that must have gone since the peak before a trim is worth its cost.
    var minimumDrop: Int
    private(set) var peak = 0
    /// The open connections at the last trim, while its follow-up is due.
    private var followUp: Int?

    init(minimumDrop: Int = 256) {
        self.minimumDrop = minimumDrop
    }

    /// Called every interval with the open connections; true: trim now (the peak starts again from `open`).
    mutating func observe(open: Int) -> Bool {
        if let previous = followUp {
            followUp = nil
            if open <= previous {
                peak = open
                return true
            }
        }
        peak = max(peak, open)
        guard peak - open >= minimumDrop, open * 2 <= peak else { return false }
        peak = open
        followUp = open
        return true
    }
}

/// Checks the open connections every `interval` and calls `malloc_trim(0)` as ``HeapTrimPolicy`` says.
struct HeapTrimmer: Service {
    static let interval: Duration = .seconds(10)
    let openConnections: @Sendable () -> Int
    let logger: Logger

    /// Returns (without an error, so that pop3d still exits 0) when graceful shutdown begins.
    func run() async {
        await cancelWhenGracefulShutdown {
            var policy = HeapTrimPolicy()
            while !Task.isCancelled {
                do {
                    try await Task.sleep(for: Self.interval)
                } catch {
                    return
                }
                let open = openConnections()
                let peak = policy.peak
                guard policy.observe(open: open) else { continue }
                #if canImport(Glibc)
                    let before = Self.residentMiB()
                    let clock = ContinuousClock()
                    let start = clock.now
                    _ = malloc_trim(0)
                    logger.info(
                        "heap trimmed",
                        metadata: [
                            "open": "\(open)", "peak": "\(peak)", "rss_mib_before": "\(before)",
                            "rss_mib_after": "\(Self.residentMiB())", "ms": "\(Int((clock.now - start) / .milliseconds(1)))",
                        ])
                #endif
            }
        }
    }

    /// This process's resident set in MiB (/proc/self/statm), -1 where unknown.
    static func residentMiB() -> Int {
        #if canImport(Glibc)
            guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return -1 }
            let fields = text.split(separator: " ")
            guard fields.count > 1, let pages = Int(fields[1]) else { return -1 }
            return (pages * Int(sysconf(Int32(_SC_PAGESIZE)))) >> 20
        #else
            return -1
        #endif
    }
}
