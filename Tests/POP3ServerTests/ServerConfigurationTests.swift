import Foundation
import Testing

@testable import POP3Server

@Suite struct ServerConfigurationTests {
    func load(_ yaml: String, environment: [String: String] = [:]) async throws -> ServerConfiguration {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("pop3d-config-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try yaml.write(toFile: folder + "/pop3d.yaml", atomically: true, encoding: .utf8)
        var configuration = try await ServerConfiguration.load(file: folder + "/pop3d.yaml", environment: environment)
        // Paths are resolved against the file's folder; strip it for comparison.
        configuration.passwdFile = configuration.passwdFile.replacingOccurrences(of: folder + "/", with: "")
        configuration.maildirTemplate = configuration.maildirTemplate.replacingOccurrences(of: folder + "/", with: "")
        return configuration
    }

    static let minimal = """
        listen:
          pop3s: "127.0.0.1:995"
          pop3: ["127.0.0.1:110", "[::1]:110"]
        tls:
          certificate: tls/cert.pem
          key: tls/key.pem
        passwd_file: users
        maildir: "mail/%u"
        """

    @Test func contractKeys() async throws {
        let c = try await self.load(Self.minimal)
        #expect(c.pop3sListeners == [ListenAddress(host: "127.0.0.1", port: 995)])
        #expect(c.pop3Listeners == [ListenAddress(host: "127.0.0.1", port: 110), ListenAddress(host: "::1", port: 110)])
        #expect(c.passwdFile == "users")
        #expect(c.maildirTemplate == "mail/%u")
        #expect(c.certificatePath?.hasSuffix("/tls/cert.pem") == true)
        #expect(c.limits == ServerLimits())
        #expect(!c.allowCleartextAuthentication)
    }

    @Test func environmentOverrides() async throws {
        let c = try await self.load(Self.minimal, environment: ["POP3D_MAILDIR": "/var/mail/%u", "POP3D_LIMITS_IDLE_TIMEOUT": "900", "OTHER": "x"])
        #expect(c.maildirTemplate == "/var/mail/%u")
        #expect(c.limits.idleTimeout == .seconds(900))
    }

    @Test(arguments: [
        ("limits:\n  idle_timeout: 60\n", "limits.idle_timeout"),
        ("limits:\n  bad_commands_before_login: lots\n", "limits.bad_commands_before_login"),
        ("auth:\n  allow_cleartext: maybe\n", "auth.allow_cleartext"),
        ("log:\n  level: loud\n", "log.level"),
    ])
    func badValuesNameTheirKey(extra: String, key: String) async throws {
        await #expect {
            _ = try await self.load(Self.minimal + "\n" + extra)
        } throws: { error in
            (error as? ConfigurationError)?.key == key
        }
    }

    /// A misspelt key fails, naming it and the key it probably meant, in the file and in the environment alike.
    @Test(arguments: [
        ("limits:\n  idle_timout: 5\n", [:], "limits.idle_timout", "limits.idle_timeout"),
        ("auth:\n  allow_cleartxt: true\n", [:], "auth.allow_cleartxt", "auth.allow_cleartext"),
        ("passwd_fiel: users\n", [:], "passwd_fiel", "passwd_file"),
        ("colour: blue\n", [:], "colour", nil),
        ("limits: 5\n", [:], "limits", nil),
        ("", ["POP3D_LIMITS_IDLE_TIMOUT": "900"], "POP3D_LIMITS_IDLE_TIMOUT", "POP3D_LIMITS_IDLE_TIMEOUT"),
        ("", ["POP3D_NONSENSE": "1"], "POP3D_NONSENSE", nil),
    ] as [(String, [String: String], String, String?)])
    func unknownKeysAreRefused(extra: String, environment: [String: String], key: String, suggestion: String?) async throws {
        await #expect {
            _ = try await self.load(Self.minimal + "\n" + extra, environment: environment)
        } throws: { error in
            guard let error = error as? ConfigurationError, error.key == key else { return false }
            return suggestion.map { error.message.contains("did you mean \($0)") } ?? !error.message.contains("did you mean")
        }
    }

    /// `tls.ticket_lifetime` (issue 15's contract) cannot be honoured through swift-nio-ssl: setting it, in the file
    /// or the environment, is refused with the reason and what holds instead; unset (or null, as check-config
    /// prints it) it is fine.
    @Test func ticketLifetimeIsRefusedAsUnsupported() async throws {
        for (yaml, environment) in [
            (Self.minimal.replacingOccurrences(of: "  key: tls/key.pem", with: "  key: tls/key.pem\n  ticket_lifetime: 3600"), [:]),
            (Self.minimal, ["POP3D_TLS_TICKET_LIFETIME": "3600"]),
        ] as [(String, [String: String])] {
            await #expect {
                _ = try await self.load(yaml, environment: environment)
            } throws: { error in
                guard let error = error as? ConfigurationError, error.key == "tls.ticket_lifetime" else { return false }
                return error.message.contains("not supported") && error.message.contains("rotated every 48 hours")
            }
        }
        let c = try await self.load(Self.minimal.replacingOccurrences(of: "  key: tls/key.pem", with: "  key: tls/key.pem\n  ticket_lifetime: null"))
        #expect(c.renderedYAML.contains("ticket_lifetime: null"))
    }

    /// Every key the server reads is printed by check-config, and nothing else: the list the unknown-key check
    /// uses and the configuration cannot drift apart.
    @Test func renderedKeysAreTheKnownKeys() async throws {
        let rendered = try await self.load(Self.minimal).renderedYAML
        let leaves = try ConfigurationKeys.leaves(ofYAML: rendered).map(\.key)
        #expect(leaves.sorted() == ConfigurationKeys.all.sorted())
        // The rendered file loads again as it is.
        #expect(throws: Never.self) { try ConfigurationKeys.check(yaml: rendered, environment: [:]) }
    }

    /// `pop3d check-config`'s output is a configuration: loaded again it renders the same, for either backend
    /// (keys that do not apply are printed as null, which reads as unset).
    @Test(arguments: [
        Self.minimal,
        Self.minimal + """

            lmtp:
              max_recipients: 500
            metrics:
              listen: "127.0.0.1:9100"
            policy:
              expire_days: 30
            log:
              format: json
            limits:
              idle_timeout: 900
            """,
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
        """,
    ])
    func renderedConfigurationLoadsAgain(yaml: String) async throws {
        let rendered = try await self.load(yaml).renderedYAML
        let again = try await self.load(rendered).renderedYAML
        #expect(again == rendered)
    }

    @Test func failureDelayIsConfigurableAndZeroWarns() async throws {
        #expect(try await self.load(Self.minimal).authenticationFailureDelay == .seconds(2))
        #expect(try await self.load(Self.minimal).warnings.isEmpty)
        let none = try await self.load(Self.minimal + "\nauth:\n  failure_delay: 0\n")
        #expect(none.authenticationFailureDelay == .zero)
        #expect(none.warnings.contains { $0.hasPrefix("auth.failure_delay") })
        await #expect { _ = try await self.load(Self.minimal + "\nauth:\n  failure_delay: 61\n") } throws: {
            ($0 as? ConfigurationError)?.key == "auth.failure_delay"
        }
    }

    @Test func missingRequiredKeys() async throws {
        await #expect { _ = try await self.load("listen:\n  pop3s: \"127.0.0.1:995\"\nmaildir: m\n") } throws: {
            ($0 as? ConfigurationError)?.key == "passwd_file"
        }
        await #expect { _ = try await self.load("passwd_file: u\nmaildir: m\n") } throws: {
            ($0 as? ConfigurationError)?.key == "listen"
        }
        await #expect { _ = try await self.load("listen:\n  pop3s: \"127.0.0.1:995\"\npasswd_file: u\nmaildir: m\n") } throws: {
            ($0 as? ConfigurationError)?.key == "tls.certificate"
        }
    }

    @Test func maildirLocator() throws {
        let locator = MaildirLocator(template: "/srv/mail/%d/%n/Maildir")
        #expect(try locator.path(user: "alice@example.org", home: nil) == "/srv/mail/example.org/alice/Maildir")
        #expect(try MaildirLocator(template: "~/Maildir").path(user: "bob", home: "/home/bob") == "/home/bob/Maildir")
        #expect(throws: MaildirLocator.LocateError.noHome) { try MaildirLocator(template: "~/Maildir").path(user: "bob", home: nil) }
        for unsafe in ["../etc", "a/b", ".hidden", "x\u{1}y", ""] {
            #expect(throws: MaildirLocator.LocateError.unsafeUserName) { try locator.path(user: unsafe, home: nil) }
        }
    }
}
