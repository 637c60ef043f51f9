import SASL
import Testing

@Suite struct StringPreparationTests {
    @Test func userNamesAreComparedInNFC() {
        #expect(StringPreparation.userName("jo\u{0065}\u{0301}") == "jo\u{00E9}")
        #expect(StringPreparation.userName("alice") == "alice")
    }

    /// RFC 4013 §3 examples.
    @Test func saslPrepExamples() {
        #expect(StringPreparation.saslPrep("I\u{00AD}X") == "IX")
        #expect(StringPreparation.saslPrep("user") == "user")
        #expect(StringPreparation.saslPrep("USER") == "USER")
        #expect(StringPreparation.saslPrep("\u{00AA}") == "a")
        #expect(StringPreparation.saslPrep("\u{2168}") == "IX")
        #expect(StringPreparation.saslPrep("\u{0007}") == nil)
        #expect(StringPreparation.saslPrep("a\u{00A0}b") == "a b")
        #expect(StringPreparation.saslPrep("pa\u{0073}\u{0307}s") == "pa\u{1E61}s")
        #expect(StringPreparation.saslPrep("") == nil)
        #expect(StringPreparation.saslPrep("\u{E000}x") == nil, "private use")
    }
}
