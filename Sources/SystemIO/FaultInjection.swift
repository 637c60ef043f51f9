import Synchronization

/// A test seam (docs/security-cases.md 46, 56): makes `FileSystem` calls fail with a chosen errno for paths under a
/// prefix, so that storage errors can be injected where the real file system will not fail on demand (EIO from
/// fsync, an unlink refused). Disarmed, a call costs one atomic load.
public final class FaultInjection: Sendable {
    public static let shared = FaultInjection()

    struct Rule: Sendable {
        var operation: String
        var pathPrefix: String
        var errnoValue: Int32
        /// Calls that match but pass before the first failure (0: fail from the first).
        var skip: Int
    }

    private let armed = Atomic<Bool>(false)
    private let rules = Mutex<[Rule]>([])

    /// From now on `operation` ("fsync", "unlink") on paths under `pathPrefix` fails with `errnoValue`, after
    /// `skip` calls that pass.
    public func arm(_ operation: String, under pathPrefix: String, errno errnoValue: Int32, after skip: Int = 0) {
        self.rules.withLock { $0.append(Rule(operation: operation, pathPrefix: pathPrefix, errnoValue: errnoValue, skip: skip)) }
        self.armed.store(true, ordering: .releasing)
    }

    public func disarm(under pathPrefix: String) {
        self.rules.withLock { rules in
            rules.removeAll { $0.pathPrefix == pathPrefix }
            if rules.isEmpty { self.armed.store(false, ordering: .releasing) }
        }
    }

    func check(_ operation: String, _ path: String) throws(FileSystemError) {
        guard self.armed.load(ordering: .acquiring) else { return }
        let failure = self.rules.withLock { rules -> Int32? in
            guard let index = rules.firstIndex(where: { $0.operation == operation && path.hasPrefix($0.pathPrefix) }) else { return nil }
            if rules[index].skip > 0 {
                rules[index].skip -= 1
                return nil
            }
            return rules[index].errnoValue
        }
        if let failure { throw FileSystemError(operation, path: path, errno: failure) }
    }
}
