import Foundation
import MailStorePostgres
import Testing

@testable import POP3Server

/// `storage.postgres.url` and the `storage` keys, parsed without a database.
@Suite struct PostgresSettingsTests {
    @Test(arguments: [
        ("postgresql://pop3d@127.0.0.1:5432/pop3", PostgresSettings.Endpoint.tcp(host: "127.0.0.1", port: 5432), "pop3d", "pop3"),
        ("postgres://pop3d@db.example/pop3", .tcp(host: "db.example", port: 5432), "pop3d", "pop3"),
        ("postgresql://pop3d@[::1]:6543/mail", .tcp(host: "::1", port: 6543), "pop3d", "mail"),
        ("postgresql://pop3d@/pop3?host=/run/postgresql", .unixSocket(path: "/run/postgresql/.s.PGSQL.5432"), "pop3d", "pop3"),
        ("postgresql://mail%40user@localhost:5433/my%20db", .tcp(host: "localhost", port: 5433), "mail@user", "my db"),
    ])
    func parses(url: String, endpoint: PostgresSettings.Endpoint, user: String, database: String) throws {
        let settings = try PostgresSettings(url: url)
        #expect(settings.endpoint == endpoint)
        #expect(settings.user == user)
        #expect(settings.database == database)
        #expect(settings.tls == .prefer && settings.poolSize == 8 && !settings.allowAsyncCommit)
    }

    @Test(arguments: [
        ("postgresql://pop3d:secret@127.0.0.1/pop3", "password in the URL is refused"),
        ("mysql://pop3d@127.0.0.1/pop3", "expected postgresql://"),
        ("postgresql://127.0.0.1/pop3", "names no user"),
        ("postgresql://pop3d@127.0.0.1", "names no database"),
        ("postgresql://pop3d@127.0.0.1/", "names no database"),
        ("postgresql://pop3d@127.0.0.1:0/pop3", "bad port"),
        ("postgresql://pop3d@127.0.0.1:x/pop3", "bad port"),
        ("postgresql://pop3d@[::1/pop3", "unclosed ["),
        ("postgresql://pop3d@/pop3", "names no host"),
        ("postgresql://pop3d@/pop3?host=relative", "absolute socket folder"),
        ("postgresql://pop3d@h/pop3?sslmode=disable", "unknown URL parameter"),
    ])
    func refuses(url: String, needle: String) {
        #expect {
            try PostgresSettings(url: url)
        } throws: { error in
            "\(error)".contains(needle) && !"\(error)".contains("secret")
        }
    }

    func load(_ yaml: String) async throws -> ServerConfiguration {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("pop3d-pgconfig-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try yaml.write(toFile: folder + "/pop3d.yaml", atomically: true, encoding: .utf8)
        return try await ServerConfiguration.load(file: folder + "/pop3d.yaml", environment: [:])
    }

    @Test func storageKeysAreReadAndRendered() async throws {
        let configuration = try await self.load(
            """
                listen:
                  pop3: "127.0.0.1:1110"
                auth:
                  allow_cleartext: true
                storage:
                  backend: postgres
                  postgres:
                    url: "postgresql://pop3d@127.0.0.1:5432/pop3"
                    pool_size: 3
                    tls: require
                    statement_timeout: 7
                    pool_timeout: 2
                    allow_async_commit: true
                """
        )
        #expect(configuration.storageBackend == .postgres)
        #expect(!configuration.usesPasswdFile)
        let postgres = try #require(configuration.postgres)
        #expect(postgres.poolSize == 3 && postgres.tls == .require && postgres.allowAsyncCommit)
        #expect(postgres.statementTimeout == .seconds(7) && postgres.poolTimeout == .seconds(2))
        #expect(configuration.renderedYAML.contains("backend: postgres"))
        #expect(configuration.renderedYAML.contains("passwd_file: null"))
    }

    @Test(arguments: [
        ("storage:\n  backend: mysql\n", "storage.backend"),
        ("passwd_file: users\nmaildir: mail/%u\nstorage:\n  postgres:\n    pool_size: 3\n", "storage.postgres.pool_size"),
        ("storage:\n  backend: postgres\n", "storage.postgres.url"),
        ("storage:\n  backend: postgres\n  postgres:\n    url: \"postgresql://p@h/d\"\n    tls: verify-full\n", "storage.postgres.ca_file"),
        ("storage:\n  backend: postgres\n  postgres:\n    url: \"postgresql://p@h/d\"\n    tls: maybe\n", "storage.postgres.tls"),
        ("storage:\n  backend: postgres\n  postgres:\n    url: \"postgresql://p@h/d\"\n    pool_size: 0\n", "storage.postgres.pool_size"),
        ("storage:\n  backend: postgres\n  postgres:\n    url: \"postgresql://p@h/d\"\n    pool_sise: 3\n", "storage.postgres.pool_sise"),
    ])
    func refusesBadStorageKeys(yaml: String, key: String) async {
        let text = "auth:\n  allow_cleartext: true\n" + (yaml.hasPrefix("listen:") ? yaml : "listen:\n  pop3: \"127.0.0.1:1110\"\n" + yaml)
        await #expect {
            try await self.load(text)
        } throws: { error in
            (error as? ConfigurationError)?.key == key
        }
    }
}
