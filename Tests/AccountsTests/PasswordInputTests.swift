import SystemIO
import Testing

struct PasswordInputTests {
    struct Fixture: Sendable, CustomTestStringConvertible {
        var input: [UInt8]
        var expected: String?
        var testDescription: String { String(reflecting: String(decoding: self.input, as: UTF8.self)) }

        init(_ input: String, _ expected: String?) {
            self.input = Array(input.utf8)
            self.expected = expected
        }

        init(bytes: [UInt8], _ expected: String?) {
            self.input = bytes
            self.expected = expected
        }
    }

    @Test(arguments: [
        Fixture("secret\n", "secret"),
        Fixture("secret\r\n", "secret"),
        Fixture("secret", "secret"),
        Fixture("secret\r", "secret"),
        Fixture("  spaced out \t\n", "  spaced out \t"),
        Fixture("first\nsecond\n", "first"),
        Fixture("first\r\nsecond", "first"),
        Fixture("\n", ""),
        Fixture("\r\n", ""),
        Fixture("p\u{00E4}ss:w\u{00F6}rd\n", "p\u{00E4}ss:w\u{00F6}rd"),
        Fixture("two\r\r\n", "two\r"),
        Fixture("", nil),
        Fixture(bytes: [0x66, 0xFF, 0x0A], nil),
    ])
    func firstLine(_ fixture: Fixture) {
        #expect(PasswordInput.firstLine(of: fixture.input) == fixture.expected)
    }
}
