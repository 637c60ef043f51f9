import Foundation
import MailStoreTestSupport
import Testing

@testable import MailStore

@Suite("Maildir quota")
struct MaildirQuotaTests {
    @Test func dovecotRulesAreRead() throws {
        #expect(try MaildirQuota(extraFields: []).isUnlimited)
        #expect(try MaildirQuota(extraFields: ["userdb_quota_rule=*:storage=1G"]) == MaildirQuota(storageBytes: 1 << 30))
        #expect(try MaildirQuota(extraFields: ["quota_rule=*:storage=512M", "userdb_quota_rule2=*:messages=1000"])
            == MaildirQuota(storageBytes: 512 << 20, messages: 1000))
        #expect(try MaildirQuota(extraFields: ["userdb_quota_rule=*:bytes=10240"]) == MaildirQuota(storageBytes: 10_240))
        #expect(try MaildirQuota(extraFields: ["userdb_quota_rule=*:storage=10kB"]) == MaildirQuota(storageBytes: 10_240))
        // 0 and "ignore" mean no limit; other mailboxes' rules do not apply to a maildrop; other fields are ignored.
        #expect(try MaildirQuota(extraFields: ["userdb_quota_rule=*:storage=0", "userdb_quota_rule2=Trash:storage=+100M", "userdb_mail=maildir:~/M"]).isUnlimited)
        #expect(try MaildirQuota(extraFields: ["userdb_quota_rule=*:ignore"]).isUnlimited)
    }

    /// A rule that cannot be read is an error: a typo must not lift a limit silently.
    @Test(arguments: ["userdb_quota_rule=*:storage=lots", "userdb_quota_rule=*:storage=-1", "userdb_quota_rule=storage=1G",
                      "userdb_quota_rule=*:storage", "userdb_quota_rule=*:messages=many", "userdb_quota_rule=*:files=3",
                      "userdb_quota_rule=*:storage=99999999999T"])
    func unreadableRulesAreErrors(_ field: String) {
        #expect(throws: MaildirQuota.RuleError.self) { try MaildirQuota(extraFields: [field]) }
    }

    @Test func usageCountsNewAndCurBySizeInNameOrFile() throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        #expect(try MaildirQuota.usage(ofMaildir: fixture.path) == (0, 0))
        try fixture.createLayout()
        try fixture.write("new/1.a,S=100,W=104", "not 100 bytes")
        try fixture.write("cur/2.b:2,S", "12345")
        try fixture.write("tmp/3.c", String(repeating: "x", count: 5000))
        try fixture.write("new/.hidden", "x")
        #expect(try MaildirQuota.usage(ofMaildir: fixture.path) == (105, 2))
    }
}
