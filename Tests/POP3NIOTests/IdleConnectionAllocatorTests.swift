import NIOCore
import Testing

@testable import POP3NIO

@Suite struct IdleConnectionAllocatorTests {
    /// A slot is handed out, taken back with its pages dropped (they read as zeros next time), and reused.
    @Test func slotsAreReusedAndTheirPagesDropped() throws {
        let arena = try #require(SlotArena(slotSize: 16 * 1024, capacity: 2, warmSlots: 0))
        let first = try #require(arena.take())
        #expect(arena.contains(first) && arena.inUse == 1)
        first.initializeMemory(as: UInt8.self, repeating: 0xA5, count: arena.slotSize)
        arena.give(first)
        #expect(arena.inUse == 0)
        let again = try #require(arena.take())
        #expect(again == first)
        let bytes = UnsafeRawBufferPointer(start: again, count: arena.slotSize)
        #expect(bytes.allSatisfy { $0 == 0 })
        arena.give(again)
    }

    /// The first slots returned are kept warm (pages and contents as they were) and handed out first; past that
    /// number a returned slot's pages go back to the kernel.
    @Test func warmSlotsKeepTheirPages() throws {
        let arena = try #require(SlotArena(slotSize: 4096, capacity: 4, warmSlots: 1))
        let a = try #require(arena.take())
        let b = try #require(arena.take())
        a.storeBytes(of: 0xA5, as: UInt8.self)
        b.storeBytes(of: 0x5A, as: UInt8.self)
        arena.give(a)  // warm
        arena.give(b)  // the warm slot is taken: dropped
        #expect(arena.inUse == 0)
        let again = try #require(arena.take())
        #expect(again == a && again.load(as: UInt8.self) == 0xA5)
        let next = try #require(arena.take())
        #expect(next == b && next.load(as: UInt8.self) == 0)
        arena.give(again)
        arena.give(next)
    }

    /// When every slot is in use, take() says so (the allocator then goes to malloc).
    @Test func aFullArenaRefuses() throws {
        let arena = try #require(SlotArena(slotSize: 4096, capacity: 2))
        let a = try #require(arena.take())
        let b = try #require(arena.take())
        #expect(arena.take() == nil)
        #expect(!arena.contains(UnsafeMutableRawPointer(bitPattern: UInt(bitPattern: b) + 4096)!))
        arena.give(a)
        #expect(arena.take() == a)
        arena.give(a)
        arena.give(b)
    }

    /// Through ByteBuffer: swift-nio-ssl's two buffer sizes come from slots and go back when the buffer dies; a buffer
    /// that grows out of its slot keeps its bytes and frees the slot (16 KiB grows to a 32 KiB one, 32 KiB to
    /// malloc); other sizes never touch the slots.
    @Test func byteBuffersUseSlotsOnlyForTheirSizes() throws {
        let allocator = IdleConnectionAllocator.make(maximumConnections: 64)
        func inUse(_ size: Int) -> Int { IdleConnectionAllocator.usage.first { $0.slotSize == size }?.inUse ?? -1 }
        let before32 = inUse(32 * 1024)
        let before16 = inUse(16 * 1024)
        do {
            var plaintext = allocator.buffer(capacity: 32 * 1024)
            plaintext.writeString("USER alice\r\n")
            #expect(inUse(32 * 1024) == before32 + 1)
            var outbound = allocator.buffer(capacity: 16 * 1024)
            outbound.writeBytes(Array(repeating: UInt8(7), count: 16 * 1024))
            #expect(inUse(16 * 1024) == before16 + 1)
            outbound.writeBytes(Array(repeating: UInt8(8), count: 100))  // grows to 32 KiB: another slot
            #expect(inUse(32 * 1024) == before32 + 2)
            #expect(outbound.readableBytes == 16 * 1024 + 100)
            #expect(outbound.getBytes(at: 0, length: 16 * 1024) == Array(repeating: UInt8(7), count: 16 * 1024))
            #expect(outbound.getBytes(at: 16 * 1024, length: 100) == Array(repeating: UInt8(8), count: 100))
            #expect(inUse(16 * 1024) == before16)
            outbound.writeBytes(Array(repeating: UInt8(9), count: 16 * 1024))  // grows to 64 KiB: malloc
            #expect(inUse(32 * 1024) == before32 + 1)
            #expect(outbound.getBytes(at: 16 * 1024, length: 100) == Array(repeating: UInt8(8), count: 100))
            let other = allocator.buffer(capacity: 1000)
            #expect(inUse(32 * 1024) == before32 + 1 && other.capacity >= 1000)
            #expect(plaintext.readString(length: plaintext.readableBytes) == "USER alice\r\n")
        }
        #expect(inUse(32 * 1024) == before32)
        #expect(inUse(16 * 1024) == before16)
    }
}
