@testable import Accounts
import Testing

struct PasswordHashTests {
    /// Hashes made by other tools (Python's crypt module, `openssl passwd`, a C program calling libxcrypt's
    /// crypt_gensalt_rn + crypt), pasted literally.
    struct ForeignHash: Sendable, CustomTestStringConvertible {
        var tool: String
        var field: String
        var password: String
        var testDescription: String { "\(self.tool): \(self.field.prefix(24))…" }
    }

    static let foreignHashes: [ForeignHash] = [
        ForeignHash(
            tool: "python crypt METHOD_SHA512",
            field: "{SHA512-CRYPT}$6$Edt/H9MlCbhTK5b7$TBQqxW17HrxWFYuizKBizWtCz7JpABxzAvLNidLN0j8peNDP9gPPQpAkkb5q3zSTa4TJrhH6NYHIeYvJNZJjR.",
            password: "correct horse"
        ),
        ForeignHash(
            tool: "python crypt METHOD_SHA512, no scheme prefix (default CRYPT)",
            field: "$6$Edt/H9MlCbhTK5b7$TBQqxW17HrxWFYuizKBizWtCz7JpABxzAvLNidLN0j8peNDP9gPPQpAkkb5q3zSTa4TJrhH6NYHIeYvJNZJjR.",
            password: "correct horse"
        ),
        ForeignHash(
            tool: "python crypt METHOD_SHA256",
            field: "{SHA256-CRYPT}$5$wOG7YA3ThDbS1Wle$emOykxJFYWvJWRTTVsoXKeu05CrJFv9sK32YwYx4H3A",
            password: "correct horse"
        ),
        ForeignHash(
            tool: "python crypt $5$rounds=10000, UTF-8 password, lower-case scheme",
            field: "{sha256-crypt}$5$rounds=10000$saltstringsaltst$DhrNEPcQkZDZ6VvdYAHemPCfpSK.0kkrNtG/Y1wLlfD",
            password: "p\u{00E4}ssw\u{00F6}rd"
        ),
        ForeignHash(
            tool: "python crypt METHOD_MD5",
            field: "{MD5-CRYPT}$1$KmjioVK4$yH5RpZciv1tgWCTdhp1Sv0",
            password: "hunter2"
        ),
        ForeignHash(
            tool: "python crypt METHOD_BLOWFISH ($2b$12)",
            field: "{BLF-CRYPT}$2b$12$JJxPK6b9JuTgCLFBkUN11uh3eoomuwWOpxo6UGCRhc6vUgPQndeqm",
            password: "hunter2"
        ),
        ForeignHash(
            tool: "openssl passwd -6",
            field: "{SHA512-CRYPT}$6$0Y4yEGeXkTJ7Zckx$gzi7F0oP1njPzAdsllxKYtvMkrcwgU/7hi0Uir/bgSs2Ou.KLItMCSpK.p/CSPA4GVXi6SG5zqLHNN18QH3aN/",
            password: "Tr0ub4dor&3"
        ),
        ForeignHash(
            tool: "openssl passwd -6 -salt",
            field: "{CRYPT}$6$abcdefgh12345678$mVZR3tU3sBXBM2jEcsh60UZm1Clqp6Qy4kE/ZaiwbjjJn5ROoF3X6P.o.t9l5QYfEOCMJr0s4QFPONzPyCxfO1",
            password: "Tr0ub4dor&3"
        ),
        ForeignHash(
            tool: "openssl passwd -5",
            field: "{SHA256-CRYPT}$5$yyv/LrydtfKrVsVo$C3SQj9iJBZueK6xtS3gtVDNs23Ep3/F.AEATnyRJn35",
            password: "Tr0ub4dor&3"
        ),
        ForeignHash(
            tool: "libxcrypt yescrypt (crypt_gensalt_rn NULL)",
            field: "{CRYPT}$y$j9T$yjvF27LX0Z9e4RPWzFQgD0$JBC27CAuLKHqbsDHYFwsVROP50zbmaT948tfNDwrVg/",
            password: "pa55 word!"
        ),
        ForeignHash(
            tool: "libxcrypt bcrypt $2b$10",
            field: "{BLF-CRYPT}$2b$10$c.s26yTys5Mc5oUdaMAeae/BK5n5MCAcJkib7prasBTrhGbMGfkO2",
            password: "pa55 word!"
        ),
        ForeignHash(
            tool: "libxcrypt bcrypt $2y$05",
            field: "{BLF-CRYPT}$2y$05$/VHpNVmHGqW7ENCw2zPI6.4UbFvcFlYKyQcLM1u.ODwJ6i9D3daAq",
            password: "pa55 word!"
        ),
        ForeignHash(
            tool: "libxcrypt $6$rounds=1000",
            field: "{SHA512-CRYPT}$6$rounds=1000$nB.jSsTdVwtD6CxY$/3TCQuXP0tF1pCaW4ecLjeajjJ6iFRCI/rx45eXP6m6dF4RUBjOxhvEUxL0Fa8kJmZr0hBmi9r.hjcduOZXpp1",
            password: "pa55 word!"
        ),
        ForeignHash(tool: "plain", field: "{PLAIN}hunter2", password: "hunter2"),
        ForeignHash(tool: "cleartext", field: "{CLEARTEXT}a:b c", password: "a:b c"),
    ]

    @Test(arguments: foreignHashes)
    func foreignHashVerifies(_ fixture: ForeignHash) {
        #expect(PasswordHash.verify(password: fixture.password, against: fixture.field))
    }

    @Test(arguments: foreignHashes)
    func wrongPasswordFails(_ fixture: ForeignHash) {
        #expect(!PasswordHash.verify(password: fixture.password + "x", against: fixture.field))
        #expect(!PasswordHash.verify(password: String(fixture.password.dropLast()), against: fixture.field))
        #expect(!PasswordHash.verify(password: "", against: fixture.field))
        #expect(!PasswordHash.verify(password: fixture.password.uppercased(), against: fixture.field))
    }

    @Test(arguments: PasswordScheme.allCases)
    func makeThenVerify(_ scheme: PasswordScheme) throws {
        for password in ["s3cret", "", "with space and : colon", "p\u{00E4}ssw\u{00F6}rd \u{1F511}"] {
            let field = try PasswordHash.make(password: password, scheme: scheme)
            #expect(field.hasPrefix("{\(scheme.rawValue)}"))
            #expect(PasswordHash.verify(password: password, against: field))
            #expect(!PasswordHash.verify(password: password + "!", against: field))
        }
    }

    @Test(arguments: [
        (PasswordScheme.sha512Crypt, #"\{SHA512-CRYPT\}\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}"#),
        (PasswordScheme.sha256Crypt, #"\{SHA256-CRYPT\}\$5\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{43}"#),
        (PasswordScheme.blfCrypt, #"\{BLF-CRYPT\}\$2y\$10\$[./0-9A-Za-z]{53}"#),
        (PasswordScheme.crypt, #"\{CRYPT\}\$y\$[./0-9A-Za-z]+\$[./0-9A-Za-z]+\$[./0-9A-Za-z]{43}"#),
        (PasswordScheme.plain, #"\{PLAIN\}pw"#),
    ])
    func madeHashHasTheExpectedShape(_ scheme: PasswordScheme, _ pattern: String) throws {
        let field = try PasswordHash.make(password: "pw", scheme: scheme)
        #expect(try field.wholeMatch(of: Regex(pattern)) != nil, "\(field)")
    }

    @Test func saltsAreFresh() throws {
        let first = try PasswordHash.make(password: "same", scheme: .sha512Crypt)
        let second = try PasswordHash.make(password: "same", scheme: .sha512Crypt)
        #expect(first != second)
    }

    @Test func nulInPasswordIsRejected() {
        #expect(throws: PasswordHashError.passwordContainsNUL) {
            try PasswordHash.make(password: "a\u{0}b", scheme: .sha512Crypt)
        }
        let field = "{SHA512-CRYPT}$6$abcdefgh12345678$mVZR3tU3sBXBM2jEcsh60UZm1Clqp6Qy4kE/ZaiwbjjJn5ROoF3X6P.o.t9l5QYfEOCMJr0s4QFPONzPyCxfO1"
        #expect(!PasswordHash.verify(password: "Tr0ub4dor&3\u{0}extra", against: field))
    }

    @Test(arguments: [
        "*",
        "!",
        "",
        "{SHA512-CRYPT}",
        "{SHA512-CRYPT}!$6$abcdefgh12345678$mVZR3tU3sBXBM2jEcsh60UZm1Clqp6Qy4kE/ZaiwbjjJn5ROoF3X6P.o.t9l5QYfEOCMJr0s4QFPONzPyCxfO1",
        "!$6$abcdefgh12345678$mVZR3tU3sBXBM2jEcsh60UZm1Clqp6Qy4kE/ZaiwbjjJn5ROoF3X6P.o.t9l5QYfEOCMJr0s4QFPONzPyCxfO1",
        "{CRYPT}*$6$abcdefgh12345678$mVZR3tU3sBXBM2jEcsh60UZm1Clqp6Qy4kE/ZaiwbjjJn5ROoF3X6P.o.t9l5QYfEOCMJr0s4QFPONzPyCxfO1",
        "*LK*",
        "!!",
    ])
    func lockedOrEmptyHashesNeverMatch(_ field: String) {
        #expect(!PasswordHash.verify(password: "Tr0ub4dor&3", against: field))
        #expect(!PasswordHash.verify(password: "", against: field))
        #expect(!PasswordHash.verify(password: "*", against: field))
        #expect(!PasswordHash.verify(password: "!", against: field))
        #expect(PasswordHash.check(password: "", against: field) == .unusable)
    }

    @Test(arguments: [
        // Unknown schemes
        "{SSHA}hunter2",
        "{ARGON2ID}hunter2",
        "{PLAIN.BASE64}aHVudGVyMg==",
        // A scheme name that does not match the hash it claims
        "{SHA256-CRYPT}$1$KmjioVK4$yH5RpZciv1tgWCTdhp1Sv0",
        "{SHA512-CRYPT}$1$KmjioVK4$yH5RpZciv1tgWCTdhp1Sv0",
        "{BLF-CRYPT}$1$KmjioVK4$yH5RpZciv1tgWCTdhp1Sv0",
        // Not a crypt(3) hash at all
        "{CRYPT}hunter2",
        "hunter2",
    ])
    func unknownOrMismatchedSchemesNeverMatch(_ field: String) {
        #expect(!PasswordHash.verify(password: "hunter2", against: field))
    }

    @Test func plainComparesExactly() {
        #expect(PasswordHash.verify(password: "", against: "{PLAIN}"))
        #expect(!PasswordHash.verify(password: "x", against: "{PLAIN}"))
        #expect(!PasswordHash.verify(password: "hunter", against: "{PLAIN}hunter2"))
        #expect(!PasswordHash.verify(password: "hunter22", against: "{PLAIN}hunter2"))
        #expect(PasswordHash.verify(password: "hunter2", against: "{plain}hunter2"))
    }

    @Test func constantTimeEquals() {
        #expect(PasswordHash.constantTimeEquals(Array("abc".utf8), Array("abc".utf8)))
        #expect(!PasswordHash.constantTimeEquals(Array("abd".utf8), Array("abc".utf8)))
        #expect(!PasswordHash.constantTimeEquals(Array("ab".utf8), Array("abc".utf8)))
        #expect(!PasswordHash.constantTimeEquals(Array("abcd".utf8), Array("abc".utf8)))
        #expect(!PasswordHash.constantTimeEquals([UInt8](), Array("abc".utf8)))
        #expect(PasswordHash.constantTimeEquals([UInt8](), []))
    }

    @Test func concurrentVerificationIsThreadSafe() async {
        let fixtures = Self.foreignHashes.filter { !$0.field.contains("$2b$12$") }
        await withTaskGroup(of: Bool.self) { group in
            for index in 0..<64 {
                let fixture = fixtures[index % fixtures.count]
                group.addTask { PasswordHash.verify(password: fixture.password, against: fixture.field) }
            }
            for await result in group {
                #expect(result)
            }
        }
    }
}
