#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization
import SystemIO

/// What stat(2) says of a file or directory, as far as telling that it changed goes.
struct FileStamp: Equatable, Sendable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modified: Int64
    var changed: Int64

    init(_ st: stat) {
        self.device = UInt64(st.st_dev)
        self.inode = UInt64(st.st_ino)
        self.size = Int64(st.st_size)
        self.modified = WallClock.modificationTime(st)
        self.changed = WallClock.changeTime(st)
    }

    /// Whether the stamp is older than the file system's timestamp granularity before `observedAt`, so that a
    /// change made after the stamp was taken cannot share its timestamp. Linux stamps files from a clock that
    /// ticks every 1–10 ms (a jiffy); a file system that keeps whole seconds only (no nanoseconds in either time)
    /// gets a second.
    func isSettled(observedAt: Int64) -> Bool {
        let wholeSeconds = self.modified % 1_000_000_000 == 0 && self.changed % 1_000_000_000 == 0
        let margin = wholeSeconds ? MaildirIndexCache.coarseSettleMargin : MaildirIndexCache.settleMargin
        return max(self.modified, self.changed) < observedAt - margin
    }
}

/// The stamps that decide whether a Maildir's index is still what it was: `new/`, `cur/` (any delivery, expunge,
/// move or flag change renames an entry, which changes the directory) and `dovecot-uidlist` (Dovecot or another
/// pop3d rewriting or appending to it). nil: absent.
struct MaildirStamps: Equatable, Sendable {
    var new: FileStamp?
    var cur: FileStamp?
    var uidList: FileStamp?
}

/// The last index of recently opened Maildirs, so that a maildrop nobody changed since is opened with three stat(2)
/// calls instead of two readdirs and a read of `dovecot-uidlist` (a mail client polling every few minutes is the
/// common case). An entry is used only when all three stamps are unchanged, and it is stored only when each stamp is
/// settled: taken at least `settleMargin` (a second where file times have whole seconds only) after the last change,
/// so that a change landing in the same timestamp tick as the stamp cannot go unseen. A `dovecot-uidlist` we wrote
/// ourselves is trusted at once: its stamp is taken under the uidlist lock, which every writer (Dovecot too) takes.
///
/// Bounded by the number of messages held, each Maildir counting one more (least recently used Maildirs go first).
final class MaildirIndexCache: Sendable {
    /// Messages (plus one per Maildir) held across all Maildirs, about 200 bytes each.
    static let defaultCapacity = 200_000
    /// How old a stamp must be to be trusted: five times the coarsest kernel clock tick (HZ=100); a second on
    /// file systems with whole-second times.
    static let settleMargin: Int64 = 50_000_000
    static let coarseSettleMargin: Int64 = 1_000_000_000

    private struct Slot {
        var stamps: MaildirStamps
        var entries: [MaildirEntry]
        var lastUse: UInt64
    }

    private struct State {
        var slots: [String: Slot] = [:]
        var held = 0
        var clock: UInt64 = 0
    }

    let capacity: Int
    /// Wall-clock nanoseconds, compared with file times to tell settled stamps (tests move it forward).
    let now: @Sendable () -> Int64
    private let state = Mutex(State())
    private let hitCount = Atomic<Int>(0)

    init(capacity: Int = MaildirIndexCache.defaultCapacity, clock: @escaping @Sendable () -> Int64 = WallClock.now) {
        self.capacity = capacity
        self.now = clock
    }

    /// Lookups answered from the cache.
    var hits: Int { self.hitCount.load(ordering: .relaxed) }

    /// The cached index of `path`, if its stamps are unchanged.
    func lookup(_ path: String, stamps: MaildirStamps) -> [MaildirEntry]? {
        self.state.withLock { state in
            guard var slot = state.slots[path], slot.stamps == stamps else { return nil }
            self.hitCount.add(1, ordering: .relaxed)
            state.clock += 1
            slot.lastUse = state.clock
            state.slots[path] = slot
            return slot.entries
        }
    }

    /// Remembers the index of `path` as of `stamps` (taken before the index was read), or forgets it when a stamp is
    /// not settled yet. `trustedUIDList`: the uidlist stamp was taken under the uidlist lock after our own write.
    func store(_ path: String, stamps: MaildirStamps, entries: [MaildirEntry], observedAt: Int64, trustedUIDList: Bool = false) {
        let settled = [stamps.new, stamps.cur].allSatisfy {
            $0?.isSettled(observedAt: observedAt) ?? true
        } && (trustedUIDList || (stamps.uidList?.isSettled(observedAt: observedAt) ?? true))
        self.state.withLock { state in
            if let old = state.slots.removeValue(forKey: path) { state.held -= old.entries.count + 1 }
            guard settled, entries.count < self.capacity else { return }
            state.clock += 1
            state.slots[path] = Slot(stamps: stamps, entries: entries, lastUse: state.clock)
            state.held += entries.count + 1
            guard state.held > self.capacity else { return }
            // Evict down to three quarters in one pass, so that a full cache costs one sort per many logins.
            for (key, slot) in state.slots.sorted(by: { $0.value.lastUse < $1.value.lastUse }) {
                guard state.held > self.capacity / 4 * 3 else { break }
                state.slots[key] = nil
                state.held -= slot.entries.count + 1
            }
        }
    }

    func invalidate(_ path: String) {
        self.state.withLock { state in
            if let old = state.slots.removeValue(forKey: path) { state.held -= old.entries.count + 1 }
        }
    }

    /// Messages held now (tests).
    var heldMessages: Int { self.state.withLock { $0.held } }
}
