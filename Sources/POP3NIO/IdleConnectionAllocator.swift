#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif
@_spi(CustomByteBufferAllocator) import NIOCore
import Synchronization

/// The `ByteBufferAllocator` for server connections, which mostly sit idle between a client's commands.
///
/// swift-nio-ssl gives every connection two buffers for as long as it lives: a 32 KiB plaintext read buffer and a
/// 16 KiB buffer for outgoing records, of which an idle POP3 connection uses the first page or two. From malloc's
/// heap those buffers come with whatever pages earlier connections left resident, so a server holding many idle
/// connections pays up to 48 KiB each for them. Here buffers of exactly those sizes come from slots of a reserved
/// region instead, and a slot's pages are handed back to the kernel (`MADV_DONTNEED`) when its buffer is freed
/// (beyond a few dozen slots kept warm for reuse): a connection is charged only for the pages it touches, and a
/// server whose load has passed shrinks back by itself.
/// Every other size, and any slot size once its slots are all in use, goes to malloc as usual.
///
/// `ByteBufferAllocator` takes C function pointers, so the region is process-wide: sized once, by the first call of
/// `IdleConnectionAllocator.make(maximumConnections:)`.
public enum IdleConnectionAllocator {
    /// The allocator for a listener's connections; `maximumConnections` sizes the region on the first call (later
    /// calls share it). When the region cannot be reserved, it is plain malloc.
    public static func make(maximumConnections: Int) -> ByteBufferAllocator {
        requestedSlots.store(min(max(1, maximumConnections), maximumSlots), ordering: .relaxed)
        _ = slotArenas  // reserves the region now, not on a connection's event loop
        return ByteBufferAllocator(
            allocate: { size in allocateConnectionBytes(size) },
            reallocate: { pointer, oldSize, newSize in reallocateConnectionBytes(pointer, oldSize, newSize) },
            deallocate: { pointer in deallocateConnectionBytes(pointer) },
            copy: { destination, source, count in destination.copyMemory(from: source, byteCount: count) }
        )
    }

    /// Slots in use and reserved per slot size (tests and diagnostics).
    public static var usage: [(slotSize: Int, inUse: Int, capacity: Int)] {
        slotArenas.map { ($0.slotSize, $0.inUse, $0.capacity) }
    }

    /// The buffer sizes swift-nio-ssl allocates once per connection: its plaintext read buffer (two records) and
    /// the outbound buffer of its BIO (one record).
    static let slotSizes = [32 * 1024, 16 * 1024]

    /// The most slots reserved per size (32 GiB of address space for the 32 KiB slots, none of it backed until
    /// used), whatever `limits.connections` says; connections beyond the slots use malloc.
    public static let maximumSlots = 1 << 20
}

// The allocator's functions are C function pointers, which cannot capture anything: the state is global.

private let requestedSlots = Atomic<Int>(16_384)

private let slotArenas: [SlotArena] = IdleConnectionAllocator.slotSizes.compactMap {
    SlotArena(slotSize: $0, capacity: requestedSlots.load(ordering: .relaxed))
}

private func allocateConnectionBytes(_ size: Int) -> UnsafeMutableRawPointer? {
    for arena in slotArenas where arena.slotSize == size {
        if let slot = arena.take() { return slot }
    }
    return malloc(size)
}

private func deallocateConnectionBytes(_ pointer: UnsafeMutableRawPointer) {
    for arena in slotArenas where arena.contains(pointer) {
        arena.give(pointer)
        return
    }
    free(pointer)
}

private func reallocateConnectionBytes(_ pointer: UnsafeMutableRawPointer?, _ oldSize: Int, _ newSize: Int) -> UnsafeMutableRawPointer? {
    guard let pointer, let arena = slotArenas.first(where: { $0.contains(pointer) }) else {
        return realloc(pointer, newSize)
    }
    guard let moved = allocateConnectionBytes(newSize) else { return nil }
    moved.copyMemory(from: pointer, byteCount: min(oldSize, newSize, arena.slotSize))
    arena.give(pointer)
    return moved
}

/// `capacity` slots of `slotSize` bytes in one anonymous mapping reserved without backing (MAP_NORESERVE): a page
/// costs memory only once written, and `give` returns a slot's pages to the kernel once `warmSlots` are kept.
final class SlotArena: Sendable {
    let slotSize: Int
    let capacity: Int
    private let base: UInt
    private let end: UInt
    /// Returned slots kept with their pages (no madvise), reused first: a busy server's short-lived buffers cycle
    /// through these without a system call or a page fault, and they hold at most this many slots' pages.
    let warmSlots: Int

    private struct State {
        /// Returned slots whose pages are still resident, reused last-in first-out.
        var warm: [Int32] = []
        /// Returned slots whose pages went back to the kernel.
        var free: [Int32] = []
        /// Slots below this index have been handed out at least once.
        var used = 0
    }
    private let state: Mutex<State>

    init?(slotSize: Int, capacity: Int, warmSlots: Int = 64) {
        let length = slotSize * capacity
        guard let region = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
            region != MAP_FAILED
        else { return nil }
        self.slotSize = slotSize
        self.capacity = capacity
        self.warmSlots = warmSlots
        self.base = UInt(bitPattern: region)
        self.end = self.base + UInt(length)
        self.state = Mutex(State())
        self.state.withLock { $0.free.reserveCapacity(capacity) }
    }

    func contains(_ pointer: UnsafeMutableRawPointer) -> Bool {
        let address = UInt(bitPattern: pointer)
        return address >= self.base && address < self.end
    }

    /// A free slot, or nil when all are in use.
    func take() -> UnsafeMutableRawPointer? {
        let index: Int? = self.state.withLock { state in
            if let index = state.warm.popLast() { return Int(index) }
            if let index = state.free.popLast() { return Int(index) }
            guard state.used < self.capacity else { return nil }
            state.used += 1
            return state.used - 1
        }
        return index.map { UnsafeMutableRawPointer(bitPattern: self.base + UInt($0 * self.slotSize))! }
    }

    /// Returns a slot: kept warm while fewer than `warmSlots` are, else its pages go back to the kernel (they read
    /// as zeros when touched again).
    func give(_ pointer: UnsafeMutableRawPointer) {
        let index = Int32(Int(UInt(bitPattern: pointer) - self.base) / self.slotSize)
        let keptWarm = self.state.withLock { state in
            guard state.warm.count < self.warmSlots else { return false }
            state.warm.append(index)
            return true
        }
        guard !keptWarm else { return }
        _ = madvise(pointer, self.slotSize, MADV_DONTNEED)
        self.state.withLock { $0.free.append(index) }
    }

    var inUse: Int { self.state.withLock { $0.used - $0.free.count - $0.warm.count } }
}
