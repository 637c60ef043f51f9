import POP3Core
import Testing

@testable import MailStore

@Suite("dovecot-uidlist")
struct DovecotUIDListTests {
    @Test func parsesVersion3AndWritesItBack() throws {
        let text = """
            3 V1234 N20 G0123456789abcdef0123456789abcdef X9
            3 :1.M1.h,S=5,W=6
            12 W2345 P:uidl! O2 G00ff :1700000000.M1P2.host,S=2300
            15 :1700000001.M1P2.host:2,S

            """
        let (list, warnings) = try DovecotUIDList.parse(Array(text.utf8))
        #expect(warnings.isEmpty)
        #expect(list.uidValidity == 1234 && list.nextUID == 20 && list.headerExtensions == ["X9"])
        #expect(list.records.map(\.uid) == [3, 12, 15])
        #expect(list.records[1].extensionValue("W") == "2345")
        #expect(list.records[1].extensionValue("P") == ":uidl!")
        #expect(list.records[1].baseName == "1700000000.M1P2.host,S=2300")
        #expect(list.records[2].baseName == "1700000001.M1P2.host")
        let written = String(decoding: list.serialized(), as: UTF8.self)
        #expect(written == text.replacingOccurrences(of: ":2,S", with: ""))
    }

    @Test func parsesVersion1() throws {
        let (list, _) = try DovecotUIDList.parse(Array("1 99 3\n1 a.b:2,S\n2 c.d\n".utf8))
        #expect(list.version == 1 && list.uidValidity == 99 && list.nextUID == 3)
        #expect(list.records.map(\.baseName) == ["a.b", "c.d"])
        #expect(list.records.allSatisfy { $0.extensions.isEmpty })
    }

    @Test func skipsBadLinesAndRaisesNextUID() throws {
        let text = "3 V1 N2 G0123456789abcdef0123456789abcdef\n5 :a\nbad line\n0 :zero\n7 :b/c\n9 :d\n4 :a\n11 :partial"
        let (list, warnings) = try DovecotUIDList.parse(Array(text.utf8))
        #expect(list.records.map(\.uid) == [4, 9])  // "a" moved back as UID 4 replaces UID 5
        #expect(list.records.map(\.baseName) == ["a", "d"])
        #expect(list.nextUID == 10)
        #expect(warnings.count == 5)
    }

    @Test(arguments: ["", "x 1 2\n", "3 V0 N1\n", "3 V1\n", "2 1 1\n", "3 V1 N1 Gnothex\n"])
    func brokenHeadersAreRejected(_ text: String) {
        #expect(throws: DovecotUIDList.ParseError.self) { try DovecotUIDList.parse(Array(text.utf8)) }
    }

    @Test func defaultUniqueIDIsEightUpperHexDigitsEach() {
        #expect(MaildirStore.defaultUniqueID(uid: 0xAB, uidValidity: 0x6553F100) == "000000AB6553F100")
        #expect(UniqueID("abc") != nil && UniqueID("a b") == nil)
        #expect(UniqueID(String(repeating: "a", count: 71)) == nil)
    }

    @Test func sizeFieldsInNames() {
        #expect(MaildirName.sizeField(0x57, in: "1.M2.h,S=10,W=12") == 12)
        #expect(MaildirName.sizeField(0x53, in: "1.M2.h,S=10,W=12") == 10)
        #expect(MaildirName.sizeField(0x57, in: "1.M2.h,S=10") == nil)
        #expect(MaildirName.sizeField(0x57, in: "1.M2.h,W=1x") == nil)
        #expect(MaildirName.baseName("1.M2.h,W=3:2,S") == "1.M2.h,W=3")
    }
}

@Suite("POP3 message size")
struct MessageSizeTests {
    /// Naive reference: CRLF-normalise and count.
    static func reference(_ bytes: [UInt8]) -> Int {
        var size = 0
        for (index, byte) in bytes.enumerated() {
            size += (byte == 0x0A && (index == 0 || bytes[index - 1] != 0x0D)) ? 2 : 1
        }
        return size
    }

    @Test func everyShortStringAtEverySplit() {
        let alphabet: [UInt8] = [0x0D, 0x0A, 0x61]
        var inputs: [[UInt8]] = [[]]
        for _ in 0..<6 { inputs = inputs + inputs.filter { $0.count == inputs.last!.count }.flatMap { s in alphabet.map { s + [$0] } } }
        for input in inputs {
            let expected = Self.reference(input)
            #expect(MessageSize.pop3Size(of: input) == expected)
            for split in 0...input.count {
                var counter = MessageSize.Counter()
                counter.update(input[..<split])
                counter.update(Array(input[split...]))
                #expect(counter.pop3Size == expected && counter.octets == input.count)
            }
        }
    }
}
