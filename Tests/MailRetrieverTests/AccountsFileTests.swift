import Foundation
import Testing

@testable import MailRetriever

@Suite struct POP3URLTests {
    struct Fixture: Sendable, CustomStringConvertible {
        var text: String
        var expected: POP3URL?
        var description: String { text }
    }

    static let fixtures: [Fixture] = [
        .init(
            text: "pop3s://alice%40corp@mail.example.com:995",
            expected: POP3URL(scheme: .pop3s, user: "alice@corp", host: "mail.example.com", port: 995)),
        .init(
            text: "pop3s://alice@mail.example.com",
            expected: POP3URL(scheme: .pop3s, user: "alice", host: "mail.example.com", port: 995)),
        .init(
            text: "POP3://bob@localhost/", expected: POP3URL(scheme: .pop3, user: "bob", host: "localhost", port: 110)),
        .init(text: "pop3s://u@[::1]:995", expected: POP3URL(scheme: .pop3s, user: "u", host: "::1", port: 995)),
        .init(text: "pop3://u@[::1]", expected: POP3URL(scheme: .pop3, user: "u", host: "::1", port: 110)),
        .init(
            text: "pop3s://u@127.0.0.1:1995",
            expected: POP3URL(scheme: .pop3s, user: "u", host: "127.0.0.1", port: 1995)),
        .init(
            text: "pop3s://a%20b;AUTH=scram-sha-256@h",
            expected: POP3URL(scheme: .pop3s, user: "a b", host: "h", authMechanism: "SCRAM-SHA-256")),
        .init(text: "pop3s://mail.example.com", expected: nil),  // missing user
        .init(text: "pop3s://@mail.example.com", expected: nil),
        .init(text: "pop3s://alice:secret@mail.example.com", expected: nil),  // password in URL
        .init(text: "imaps://alice@mail.example.com", expected: nil),
        .init(text: "alice@mail.example.com", expected: nil),
        .init(text: "pop3s://alice@", expected: nil),
        .init(text: "pop3s://alice@host:0", expected: nil),
        .init(text: "pop3s://alice@host:65536", expected: nil),
        .init(text: "pop3s://alice@host:99x", expected: nil),
        .init(text: "pop3s://alice@[::1", expected: nil),
        .init(text: "pop3s://alice@[::1]x", expected: nil),
        .init(text: "pop3s://al%4@host", expected: nil),
        .init(text: "pop3s://alice@host/INBOX", expected: nil),
        .init(text: "pop3s://alice@ho st", expected: nil),
    ]

    @Test(arguments: fixtures)
    func parse(_ fixture: Fixture) throws {
        if let expected = fixture.expected {
            #expect(try POP3URL.parse(fixture.text) == expected)
        } else {
            #expect(throws: POP3URL.ParseError.self) { try POP3URL.parse(fixture.text) }
        }
    }

    @Test func missingUserSaysHowToWriteAt() {
        let error = #expect(throws: POP3URL.ParseError.self) { try POP3URL.parse("pop3s://mail.example.com") }
        #expect(error?.description.contains("%40") == true)
    }

    @Test func descriptionRoundTrips() throws {
        for text in ["pop3s://alice%40corp@mail.example.com:995", "pop3://u@[::1]:110"] {
            let url = try POP3URL.parse(text)
            #expect(url.description == text)
            #expect(try POP3URL.parse(url.description) == url)
        }
        #expect(
            try POP3URL.parse("pop3s://alice%40corp@Mail.example.com").accountKey.fileStem
                == "alice%40corp@mail.example.com_995")
    }
}

@Suite struct AccountsFileTests {
    let dir: TemporaryDirectory
    let environment: [String: String]

    init() throws {
        dir = try TemporaryDirectory()
        environment = ["HOME": dir.path]
        try writeFile(dir.file("work.pass"), "secret\n", mode: 0o600)
        try writeFile(dir.file("open.pass"), "secret\n", mode: 0o644)
        try writeFile(dir.file("ca.pem"), "-----BEGIN CERTIFICATE-----\n", mode: 0o644)
    }

    func load(_ yaml: String) throws -> [AccountConfiguration] {
        try writeFile(dir.file("accounts.yaml"), yaml)
        return try AccountsFile.load(path: dir.file("accounts.yaml"), environment: environment)
    }

    @Test func goodFile() throws {
        let accounts = try load(
            """
            accounts:
              work:
                url: pop3s://alice%40corp@mail.example.com:995
                password_file: ~/work.pass
                ca_file: ~/ca.pem
                maildir: ~/Mail/work
                keep: true
                keep_days: 30
                max_size: 10485760
              home:
                url: pop3://bob@pop.example.net
                starttls: true
                password_command: "pass show mail/home"
                pin: "sha256:\(String(repeating: "ab", count: 32))"
                mbox: /var/mail/bob
              relay:
                url: pop3://carol@[::1]:1110
                insecure_plaintext: yes
                mda: "procmail -d carol"
            """)
        #expect(accounts.map(\.name) == ["work", "home", "relay"])
        let work = accounts[0]
        #expect(work.url == POP3URL(scheme: .pop3s, user: "alice@corp", host: "mail.example.com", port: 995))
        #expect(work.passwordSource == .file(dir.file("work.pass")))
        #expect(work.trust == .caFile(dir.file("ca.pem")))
        #expect(work.destination == .maildir(dir.file("Mail/work")))
        #expect(work.keep && work.keepDays == 30 && work.maxSize == 10_485_760)
        #expect(work.retention == .keepDays(30))
        #expect(!work.starttls && !work.insecurePlaintext)
        let home = accounts[1]
        #expect(home.url.port == 110 && home.starttls)
        #expect(home.passwordSource == .command("pass show mail/home"))
        #expect(home.trust == .sha256Pin([UInt8](repeating: 0xAB, count: 32)))
        #expect(home.destination == .mbox("/var/mail/bob"))
        #expect(home.retention == .deleteAfterDownload)
        let relay = accounts[2]
        #expect(relay.url.host == "::1" && relay.url.port == 1110 && relay.insecurePlaintext)
        #expect(relay.passwordSource == .prompt && relay.trust == .system)
        #expect(relay.destination == .mda("procmail -d carol"))
    }

    struct Bad: Sendable, CustomStringConvertible {
        var settings: String
        var key: String
        var description: String { "\(key): " + settings.replacingOccurrences(of: "\n    ", with: "; ") }
    }

    static let base = "url: pop3s://alice@mail.example.com\n    maildir: /tmp/m"

    static let bad: [Bad] = [
        .init(settings: "maildir: /tmp/m", key: "url"),
        .init(settings: "url: pop3s://mail.example.com\n    maildir: /tmp/m", key: "url"),
        .init(settings: "url: pop3://alice@h\n    maildir: /tmp/m", key: "url"),
        .init(settings: base + "\n    starttls: true", key: "starttls"),
        .init(settings: base + "\n    starttls: maybe", key: "starttls"),
        .init(settings: base + "\n    insecure_plaintext: true", key: "insecure_plaintext"),
        .init(settings: base + "\n    password_file: ~/open.pass", key: "password_file"),
        .init(settings: base + "\n    password_file: ~/missing.pass", key: "password_file"),
        .init(settings: base + "\n    password_file: ~/work.pass\n    password_command: x", key: "password_command"),
        .init(settings: base + "\n    password: hunter2", key: "password"),
        .init(settings: base + "\n    ca_file: ~/missing.pem", key: "ca_file"),
        .init(settings: base + "\n    pin: sha1:abcd", key: "pin"),
        .init(
            settings: base + "\n    pin: sha256:\(String(repeating: "0", count: 64))\n    ca_file: ~/ca.pem", key: "pin"
        ),
        .init(settings: "url: pop3s://alice@h", key: "maildir"),
        .init(settings: base + "\n    mbox: /tmp/x", key: "maildir"),
        .init(settings: base + "\n    keep: sometimes", key: "keep"),
        .init(settings: base + "\n    keep_days: -1", key: "keep_days"),
        .init(settings: base + "\n    keep_days: ten", key: "keep_days"),
        .init(settings: base + "\n    max_size: 0", key: "max_size"),
        .init(settings: base + "\n    keep_day: 3", key: "keep_day"),
        .init(settings: base + "\n    mda: [a, b]", key: "mda"),
        .init(settings: "url: pop3s://alice@h\n    maildir: ~", key: "maildir"),
        .init(settings: "url: pop3s://alice@h\n    mbox:", key: "mbox"),
        // Login methods and OAuth 2.0.
        .init(settings: base + "\n    auth: cram-md5", key: "auth"),
        .init(settings: "url: pop3s://alice;AUTH=+APOP@h\n    maildir: /tmp/m", key: "url"),
        .init(settings: base + "\n    auth: xoauth2", key: "auth"),
        .init(settings: base + "\n    oauth2_token_command: oama access a", key: "oauth2_token_command"),
        .init(settings: base + "\n    auth: xoauth2\n    oauth2_token_command: x\n    password_command: y", key: "oauth2_token_command"),
        .init(settings: base + "\n    provider: yahoo\n    oauth2_client_id: c", key: "provider"),
        .init(settings: base + "\n    provider: microsoft", key: "oauth2_client_id"),
        .init(settings: base + "\n    oauth2_client_id: c", key: "oauth2_client_id"),
        .init(settings: base + "\n    provider: google\n    oauth2_client_id: c\n    password_command: x", key: "password_command"),
        .init(settings: base + "\n    provider: microsoft\n    oauth2_client_id: c\n    auth: plain", key: "auth"),
        .init(settings: base + "\n    provider: custom\n    oauth2_client_id: c", key: "oauth2_token_endpoint"),
        .init(settings: base + "\n    provider: custom\n    oauth2_client_id: c\n    oauth2_token_endpoint: https://as/t", key: "oauth2_device_endpoint"),
        .init(settings: base + "\n    provider: custom\n    oauth2_client_id: c\n    oauth2_token_endpoint: http://as.example/t\n    oauth2_device_endpoint: https://as/d", key: "oauth2_token_endpoint"),
        .init(settings: base + "\n    provider: google\n    oauth2_client_id: c\n    oauth2_token_endpoint: https://as/t", key: "oauth2_token_endpoint"),
        .init(settings: base + "\n    provider: google\n    oauth2_client_id: c\n    oauth2_tenant: x", key: "oauth2_tenant"),
    ]

    /// Providers: presets with their endpoints and XOAUTH2, custom with its own and OAUTHBEARER; http only on loopback.
    @Test func oauthProviders() throws {
        let accounts = try load(
            """
            accounts:
              outlook:
                \(Self.base)
                provider: microsoft
                oauth2_client_id: 0000-app
                oauth2_tenant: consumers
              gmail:
                \(Self.base)
                provider: google
                oauth2_client_id: g.apps
              corp:
                \(Self.base)
                provider: custom
                oauth2_client_id: pop3
                oauth2_token_endpoint: http://127.0.0.1:8080/token
                oauth2_device_endpoint: http://localhost:8080/device
                oauth2_scope: openid pop3
              token:
                \(Self.base)
                auth: oauthbearer
                oauth2_token_command: oama access a
            """)
        let outlook = try #require(accounts.first { $0.name == "outlook" })
        #expect(outlook.authentication == .xoauth2)
        #expect(outlook.oauth2?.tokenEndpoint == "https://login.microsoftonline.com/consumers/oauth2/v2.0/token")
        #expect(outlook.oauth2?.flow == .device && outlook.oauth2?.scope.contains("offline_access") == true)
        let gmail = try #require(accounts.first { $0.name == "gmail" })
        #expect(gmail.oauth2?.flow == .authorizationCode && gmail.authentication == .xoauth2)
        let corp = try #require(accounts.first { $0.name == "corp" })
        #expect(corp.authentication == .oauthBearer && corp.oauth2?.flow == .device && corp.oauth2?.scope == "openid pop3")
        let token = try #require(accounts.first { $0.name == "token" })
        #expect(token.oauth2 == nil && token.passwordSource == .command("oama access a"))
    }

    @Test func storedAccessTokenIsUsedOnlyWithAMinuteLeft() {
        let tokens = OAuth2Tokens(refreshToken: "r", accessToken: "a", expiresAt: 1_000)
        #expect(tokens.usableAccessToken(now: 900) == "a")
        #expect(tokens.usableAccessToken(now: 941) == nil)
        #expect(OAuth2Tokens(refreshToken: "r", accessToken: nil, expiresAt: 5_000).usableAccessToken(now: 0) == nil)
        #expect(OAuth2Provider.checkEndpoint("https://login.example/token") == nil)
        #expect(OAuth2Provider.checkEndpoint("http://[::1]:99/t") == nil)
        #expect(OAuth2Provider.checkEndpoint("http://login.example/token") != nil)
        #expect(OAuth2Provider.checkEndpoint("ftp://x/y") != nil)
    }

    @Test(arguments: bad)
    func badKeyIsNamed(_ bad: Bad) throws {
        let error = #expect(throws: AccountsFileError.self) {
            try load("accounts:\n  work:\n    \(bad.settings)\n")
        }
        #expect(error?.account == "work")
        #expect(error?.key == bad.key)
        #expect(error?.description.contains("account 'work', key '\(bad.key)'") == true)
    }

    @Test func groupReadablePasswordFileIsRefused() throws {
        let error = #expect(throws: AccountsFileError.self) {
            try load("accounts:\n  work:\n    \(Self.base)\n    password_file: ~/open.pass\n")
        }
        #expect(error?.description.contains("0644") == true)
        #expect(error?.description.contains("chmod 600") == true)
    }

    @Test func structuralErrors() throws {
        #expect(throws: AccountsFileError.self) { try load("accounts: [\n") }
        #expect(throws: AccountsFileError.self) { try load("accounts: {}\n") }
        #expect(throws: AccountsFileError.self) { try load("acounts:\n  work:\n    \(Self.base)\n") }
        #expect(throws: AccountsFileError.self) { try load("accounts:\n  work: 3\n") }
        let missing = #expect(throws: AccountsFileError.self) {
            try AccountsFile.load(path: dir.file("nope.yaml"), environment: environment)
        }
        #expect(missing?.description.contains("nope.yaml") == true)
    }

    @Test func defaultPath() {
        #expect(AccountsFile.defaultPath(environment: ["HOME": "/home/u"]) == "/home/u/.config/pop3/accounts.yaml")
        #expect(
            AccountsFile.defaultPath(environment: ["HOME": "/home/u", "XDG_CONFIG_HOME": "/cfg"])
                == "/cfg/pop3/accounts.yaml")
    }
}
