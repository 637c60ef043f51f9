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
        // `doveadm pw -s SCHEME -p pencil` (Dovecot 2.3.19, Debian 12).
        ForeignHash(
            tool: "doveadm SCRAM-SHA-256",
            field: "{SCRAM-SHA-256}4096,m1k6GC8TT2hPI103PqjDVg==,zEkVFdpS2QHklU2DDnnHYNWLLjLzkJ6ZA5BoSrUaanw=,VIohQ6klkNhv53s7MS16A09+zjLwQokFWX+nK7LDtn0=",
            password: "pencil"
        ),
        ForeignHash(
            tool: "doveadm SCRAM-SHA-1",
            field: "{SCRAM-SHA-1}4096,Swl56Up8nOYqCUvIejLY/Q==,mzOKUYkvE4UucTbkuPQl3/E+DjQ=,uhrjQRPNWsnKrR1ikGrVs+7hfKY=",
            password: "pencil"
        ),
        ForeignHash(tool: "doveadm PBKDF2", field: "{PBKDF2}$1$w1pUzDJ2TN4paJmL$5000$640b89b4ba8666735143b9f739dfe9745195ca19", password: "pencil"),
        ForeignHash(
            tool: "doveadm SSHA512",
            field: "{SSHA512}ExySLZeLcycAFr25YbmmkTyEtNi6fTNfkCWyfomZZtcHSqf4ws6eeGXlcfpXybkp/advr4SbzPoSP7/EQF6aImSkrAs=",
            password: "pencil"
        ),
        ForeignHash(tool: "doveadm SSHA256", field: "{SSHA256}+79GS15i/OqBA/m8fXrQUUwVKReRUC0sAL1F0KBuwlCFHPut", password: "pencil"),
        ForeignHash(tool: "doveadm SSHA", field: "{SSHA}QbF6atPDx/braXGzW3bcXYWS9da/71xe", password: "pencil"),
        ForeignHash(
            tool: "doveadm SHA512",
            field: "{SHA512}Gd8Bqrgo+NUINrp1cJcTrtInM1344YZDkYXAbJF6Kn03cat24wfPo7a4nvGmaC1mgd3xGISHDl3hPnk/uVXu6w==",
            password: "pencil"
        ),
        ForeignHash(tool: "doveadm SHA256", field: "{SHA256}E4CWaPtDY4Zwb2fcsFLtWEoEuhaowCoX1m00ww/O2iE=", password: "pencil"),
        ForeignHash(tool: "doveadm SHA1", field: "{SHA1}0vxRJJChUDZGC1SJQBQ51tpUB/o=", password: "pencil"),
        ForeignHash(tool: "doveadm SHA256.HEX", field: "{SHA256.HEX}13809668fb436386706f67dcb052ed584a04ba16a8c02a17d66d34c30fceda21", password: "pencil"),
        ForeignHash(
            tool: "doveadm SSHA512.HEX",
            field: "{SSHA512.HEX}63714737e3251ff689cb8bd819ed1083ed2dc6078f24b5db4a2d0a4a9fe3defc13af1ea2f27c0ca04ab78adbdf5e93a2a3ea6b3fa601fedf39811cf1b39cdfee5c926f83",
            password: "pencil"
        ),
        ForeignHash(tool: "cleartext", field: "{CLEARTEXT}a:b c", password: "a:b c"),
    ]

    /// Checked through the system's libargon2 (Debian `libargon2-1`, which Dovecot itself depends on).
    static let argon2Hashes: [ForeignHash] = [
        ForeignHash(
            tool: "doveadm ARGON2ID",
            field: "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$TrGSWJd6lzeVb20idoxU2Q$QI0OC5KMHxTZLU1hpKuAOLUJr+RGmkyW5RjYFMEYE7M",
            password: "pencil"
        ),
        ForeignHash(
            tool: "doveadm ARGON2I",
            field: "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$jhNFChDrKk6O7L5oMsTyLA$IKkeH7xz4as+1Ez+XzLGvz8L+eeJ+xsWr9/CEqu3vTs",
            password: "pencil"
        ),
    ]

    @Test(arguments: argon2Hashes)
    func argon2Verifies(_ fixture: ForeignHash) throws {
        try #require(Argon2.unavailableReason == nil, "libargon2 is not installed: \(Argon2.unavailableReason ?? "")")
        #expect(PasswordHash.verify(password: fixture.password, against: fixture.field))
        #expect(!PasswordHash.verify(password: fixture.password + "x", against: fixture.field))
        // The scheme must match the encoding's own variant.
        let swapped = fixture.field.hasPrefix("{ARGON2ID}") ? "{ARGON2I}" + fixture.field.dropFirst(10) : "{ARGON2ID}" + fixture.field.dropFirst(9)
        #expect(!PasswordHash.verify(password: fixture.password, against: String(swapped)))
    }

    /// The same doveadm hashes through each library the system has (CI installs libargon2-1; Dovecot brings
    /// libsodium23). A library that is missing here is reported as a failed requirement, not skipped in silence.
    @Test(arguments: [Argon2.Backend.libargon2, .libsodium])
    func argon2ThroughEachLibrary(_ backend: Argon2.Backend) throws {
        try #require(Argon2.has(backend), "\(backend) is not installed")
        for fixture in Self.argon2Hashes {
            let (scheme, hash) = PasswordHash.splitScheme(fixture.field)
            #expect(Argon2.verify(password: fixture.password, encoded: hash, scheme: scheme!, backend: backend) == .match)
            #expect(Argon2.verify(password: "wrong", encoded: hash, scheme: scheme!, backend: backend) == .mismatch)
        }
    }

    @Test func malformedNewSchemeFieldsNeverMatch() {
        for field in [
            "{SCRAM-SHA-256}4096,AAAA", "{SCRAM-SHA-256}", "{PBKDF2}$1$salt$0$00", "{PBKDF2}$2$salt$5000$640b89b4ba8666735143b9f739dfe9745195ca19",
            "{SSHA512}AAAA", "{SHA256}", "{SHA256.XYZ}E4CWaPtDY4Zwb2fcsFLtWEoEuhaowCoX1m00ww/O2iE=", "{ARGON2ID}$argon2id$garbage",
        ] {
            #expect(PasswordHash.check(password: "pencil", against: field) == .unusable, "\(field)")
        }
    }

    /// SCRAM keys from a stored field: its own for the same hash, derived for {PLAIN}, none otherwise.
    @Test func scramKeysFromFields() throws {
        let salt: [UInt8] = [1, 2, 3, 4]
        let scram = "{SCRAM-SHA-256}4096,m1k6GC8TT2hPI103PqjDVg==,zEkVFdpS2QHklU2DDnnHYNWLLjLzkJ6ZA5BoSrUaanw=,VIohQ6klkNhv53s7MS16A09+zjLwQokFWX+nK7LDtn0="
        #expect(PasswordHash.scramKeys(field: scram, algorithm: .sha256, plaintextSalt: salt, iterations: 4096)?.matches(password: "pencil") == true)
        #expect(PasswordHash.scramKeys(field: scram, algorithm: .sha1, plaintextSalt: salt, iterations: 4096) == nil)
        let plain = try #require(PasswordHash.scramKeys(field: "{PLAIN}pencil", algorithm: .sha256, plaintextSalt: salt, iterations: 4096))
        #expect(plain.salt == salt && plain.matches(password: "pencil"))
        #expect(PasswordHash.scramKeys(field: "{SHA512-CRYPT}$6$x$y", algorithm: .sha256, plaintextSalt: salt, iterations: 4096) == nil)
        #expect(PasswordHash.scramKeys(field: "{PLAIN}", algorithm: .sha256, plaintextSalt: salt, iterations: 4096) == nil)
    }

    @Test func scramIterationsAreConfigurableButAtLeast4096() throws {
        let field = try PasswordHash.make(password: "pw", scheme: .scramSHA256, iterations: 10_000)
        #expect(field.hasPrefix("{SCRAM-SHA-256}10000,"))
        #expect(throws: PasswordHashError.tooFewIterations(1000)) { try PasswordHash.make(password: "pw", scheme: .scramSHA256, iterations: 1000) }
    }

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
        (PasswordScheme.scramSHA256, #"\{SCRAM-SHA-256\}4096,[+/0-9A-Za-z]{22}==,[+/0-9A-Za-z]{43}=,[+/0-9A-Za-z]{43}="#),
        (PasswordScheme.scramSHA1, #"\{SCRAM-SHA-1\}4096,[+/0-9A-Za-z]{22}==,[+/0-9A-Za-z]{27}=,[+/0-9A-Za-z]{27}="#),
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
