import Accounts
import Foundation
import Logging
import MailStore
import MailStorePostgres
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import Privileges
import ServiceLifecycle
import SystemIO

/// The whole server as `pop3d serve` runs it, assembled in one place so that the integration tests run the same
/// assembly: listeners bound, certificate audited, passwd-file read, privilege helper started and root dropped
/// (when asked and started as root), then the POP3 server and the SIGHUP reload under one service group.
public final class POP3Daemon: Sendable {
    /// The version `pop3d --version` prints and `pop3d_build_info` carries.
    public static let version = "0.15.0"

    public let configuration: ServerConfiguration
    public let tls: TLSProvider?
    /// The passwd-file, when configured (with `storage.backend: postgres` it may be absent).
    public let verifier: PasswdFileVerifier?
    /// What logins are checked against: the passwd-file when there is one, else the database's accounts.
    public let accounts: any CredentialVerifier
    /// The PostgreSQL backend (`storage.backend: postgres`), checked at start: reachable, schema current, durable
    /// commits.
    public let database: MailDatabase?
    /// The auth penalty in the database and the key its credential digests share (PostgreSQL backend).
    let sharedPenalty: (store: SharedPenalty, key: [UInt8])?
    public let oauth: OAuth2Validator?
    let separation: Separation?
    let prebound: [PreboundListener]
    let preboundLMTP: [PreboundLMTPListener]
    /// `pop3d dev` (and tests) run without dropping privileges; only then may LMTP write as root.
    let dropsPrivileges: Bool
    let logger: Logger
    /// What the server counts (Prometheus registry when `metrics.listen` is set, else no-ops) and the socket that
    /// serves it, bound with the others.
    public let metrics: ServerMetrics
    let metricsSocket: CInt?
    /// What a SIGHUP reload changes for new connections.
    let live: LiveConfiguration
    /// `autoconfig.listen`'s socket, its TLS context and the host name its documents give.
    let autoconfig: (descriptor: CInt, hostname: String)?
    /// The control socket (`pop3d who`, `kick`, `penalty`) and its path, when there is one.
    let controlSocket: (descriptor: CInt, path: String, madeFolder: Bool)?

    struct Separation: Sendable {
        let helper: PrivilegedHelper
        let identity: MailOwner
    }

    /// Binds the ports, reads certificates and the passwd-file and, with `dropPrivileges` as root, starts the
    /// privileged helper and drops to `user:`/`group:`. Call it on the main thread, before any other thread
    /// exists that could run as root after the drop.
    public init(configuration: ServerConfiguration, dropPrivileges: Bool, logger: Logger, logLevel: LogLevelControl? = nil) throws {
        self.configuration = configuration
        self.live = LiveConfiguration(configuration, logLevel: logLevel)
        self.logger = logger
        for warning in configuration.warnings {
            logger.warning("configuration: \(warning)")
        }
        self.dropsPrivileges = dropPrivileges
        // The database is checked before any port is bound: a port that accepts means the server is ready.
        let opened = try configuration.postgres.map { try Self.openDatabase($0, logger: logger) }
        let database = opened?.database
        self.sharedPenalty = opened.map { (SharedPenalty(database: $0.database), $0.penaltyKey) }
        self.prebound = try ListenSocket.bindAll(configuration)
        self.preboundLMTP = try ListenSocket.bindLMTP(configuration)
        self.metricsSocket = try configuration.metricsListener.map { try ListenSocket.bind($0, key: "metrics.listen") }
        self.controlSocket = try Self.bindControlSocket(configuration, logger: logger)
        self.metrics = configuration.metricsListener == nil ? .disabled : .prometheus()
        self.metrics.buildInfo(version: Self.version)
        self.tls = try configuration.tlsConfigured
            ? TLSProvider(
                certificatePath: configuration.certificatePath!,
                privateKeyPath: configuration.privateKeyPath!,
                strictSNI: configuration.strictSNI
            ) : nil
        for warning in self.tls?.certificateWarnings ?? [] {
            logger.warning("TLS certificate: \(warning.text)")
        }
        self.metrics.certificateExpiry(self.tls?.notAfter)
        if let address = configuration.autoconfigListener, let tls = self.tls {
            guard let hostname = configuration.autoconfigHostname ?? tls.serverNames.first(where: { !$0.hasPrefix("*.") }) else {
                throw ConfigurationError(key: "autoconfig.hostname", "the certificate names no host: set the name clients connect to")
            }
            self.autoconfig = (try ListenSocket.bind(address, key: "autoconfig.listen"), hostname)
        } else {
            self.autoconfig = nil
        }
        let scramSecret = Self.scramSecret(stateFolder: configuration.stateFolder, logger: logger)
        let verifier = try configuration.usesPasswdFile
            ? PasswdFileVerifier(
                path: configuration.passwdFile,
                threadPool: .singleton,
                logger: logger,
                scramIterations: configuration.scramIterations,
                scramSecret: scramSecret
            ) : nil
        self.verifier = verifier
        if configuration.storageBackend == .postgres, let database {
            self.database = database
            self.accounts = verifier ?? DatabaseAccounts(
                database: database,
                threadPool: .singleton,
                scramIterations: configuration.scramIterations,
                scramSecret: scramSecret
            )
        } else {
            self.database = nil
            self.accounts = verifier!
        }
        let records = verifier?.records() ?? []
        do {
            self.oauth = try configuration.oauth2.map { try OAuth2Validator(settings: $0, http: OAuth2HTTPClient(), logger: logger) }
        } catch {
            throw ConfigurationError(key: "auth.oauth2.jwks", "\(error)")
        }
        if let oauth = self.oauth {
            if oauth.settings.jwksIsURL {
                // Fetched in the background: tokens are refused (and the fetch retried) until it has arrived.
                Task {
                    do {
                        try await oauth.refresh()
                        logger.info("OAuth 2.0 JWKS fetched", metadata: ["jwks": "\(oauth.settings.jwksPath)", "keys": "\(oauth.keyCount)", "left-out": "\(oauth.skippedKeys)"])
                    } catch {
                        logger.error("OAuth 2.0 JWKS fetch failed; retried when a token arrives", metadata: ["error": "\(error)"])
                    }
                }
            } else {
                logger.info("OAuth 2.0 keys loaded", metadata: ["jwks": "\(oauth.settings.jwksPath)", "keys": "\(oauth.keyCount)", "left-out": "\(oauth.skippedKeys)"])
            }
        }
        if dropPrivileges, let identity = try PrivilegeDrop.target(user: configuration.user, group: configuration.group, records: records) {
            // Started before the drop: the helper stays root to start mail workers as each account's uid/gid (not
            // needed when mail is in the database: there are no mail files to own).
            let helper = try configuration.storageBackend == .maildir
                ? PrivilegedHelper.launch(
                    executable: try PrivilegeSeparation.currentExecutable(),
                    passwdFile: configuration.passwdFile,
                    firstValidUID: configuration.firstValidUID
                ) : nil
            if helper != nil, records.contains(where: { $0.uid != nil && $0.uid != identity.uid }),
                let reason = PrivilegeSeparation.untrustedReason(configuration.passwdFile, trustedOwner: 0)
            {
                logger.error("accounts with their own uid cannot log in until the passwd-file is protected: \(reason)")
            }
            if let control = self.controlSocket {
                // Root and the run-as user only (mode 0600): the folder and the socket are the run-as user's.
                // The folder only if pop3d made it (never an existing /run or /tmp); the socket with lchown, which does
                // not follow a symlink put in its place.
                let folder = (control.path as NSString).deletingLastPathComponent
                for path in (control.madeFolder ? [folder] : []) + [control.path] where lchown(path, identity.uid, identity.gid) != 0 {
                    throw ConfigurationError(key: "control.socket", "cannot give \(path) to \(identity): \(String(cString: strerror(errno)))")
                }
            }
            for listener in self.preboundLMTP {
                // The socket belongs to the user pop3d runs as; its mode (lmtp.socket_mode) says who else connects.
                if case .unix(let path) = listener.address, lchown(path, identity.uid, identity.gid) != 0 {
                    throw ConfigurationError(key: "listen.lmtp", "cannot give unix:\(path) to \(identity): \(String(cString: strerror(errno)))")
                }
            }
            // EXPIRE's first-retrieval log is written after the drop: its folder must be the run-as user's.
            let usesExpire = configuration.policy.expireDays != nil
                || records.contains { $0.extraFields.contains { $0.hasPrefix("expire_days=") } }
            // The state folder may have been made just now, as root, for the SCRAM key: it is the run-as user's.
            if (try? FileSystem.status(configuration.stateFolder)) != nil, chown(configuration.stateFolder, identity.uid, identity.gid) != 0 {
                throw ConfigurationError(key: "state_dir", "cannot give \(configuration.stateFolder) to \(identity): \(String(cString: strerror(errno)))")
            }
            if usesExpire {
                let folder = RetrievalLog(stateFolder: configuration.stateFolder).folder
                do {
                    _ = try FileSystem.makeDirectories(folder, mode: 0o700)
                } catch {
                    throw ConfigurationError(key: "state_dir", "cannot create \(folder): \(error)")
                }
                for path in [configuration.stateFolder, folder] where chown(path, identity.uid, identity.gid) != 0 {
                    throw ConfigurationError(key: "state_dir", "cannot give \(path) to \(identity): \(String(cString: strerror(errno)))")
                }
            }
            try PrivilegeDrop.drop(to: identity)
            logger.notice("running as \(identity) after binding", metadata: ["privileged-helper": "\(helper.map { "\($0.pid)" } ?? "none")"])
            self.separation = helper.map { Separation(helper: $0, identity: identity) }
        } else {
            self.separation = nil
            let own = geteuid()
            let others = records.filter { $0.uid != nil && $0.uid != own }.count
            if others > 0 {
                logger.notice(
                    "not started as root: every account's mail is accessed as this process (uid \(own)); the passwd-file's uids apply when pop3d serve starts as root",
                    metadata: ["accounts-with-other-uids": "\(others)"]
                )
            }
        }
    }

    /// Serves until graceful shutdown: SIGTERM/SIGINT when `handleSignals` (the process's own server), or
    /// cancellation of the calling task (tests). SIGHUP reloads certificate and passwd-file when `handleSignals`;
    /// `reload()` does the same from code.
    /// With `notifier` (started by systemd, `Type=notify`): READY=1 once every listener is bound, RELOADING=1/READY=1
    /// around each SIGHUP reload, STOPPING=1 when shutdown begins.
    public func run(
        handleSignals: Bool = true,
        notifier: SystemdNotifier? = nil,
        onListening: @escaping @Sendable ([BoundListener]) -> Void = { _ in }
    ) async throws {
        defer { self.separation?.helper.shutdown() }
        // POP3, LMTP, metrics and autoconfig bind separately; the caller hears once, with every listener.
        let expected = 1 + (self.preboundLMTP.isEmpty ? 0 : 1) + (self.metricsSocket == nil ? 0 : 1) + (self.autoconfig == nil ? 0 : 1)
        let reported = NIOLockedValueBox<(count: Int, listeners: [BoundListener])>((0, []))
        let userOnListening = onListening
        let onListening: @Sendable ([BoundListener]) -> Void = { listeners in
            let all = reported.withLockedValue { state -> [BoundListener]? in
                state.count += 1
                state.listeners += listeners
                return state.count == expected ? state.listeners : nil
            }
            if let all {
                notifier?.ready("serving on \(all.map { "\($0.kind.rawValue) \($0.address)" }.joined(separator: ", "))")
                userOnListening(all)
            }
        }
        let local = MaildirProvider(
            threadPool: .singleton,
            logger: self.logger,
            indexCacheCapacity: self.configuration.limits.indexCacheMessages
        )
        /// Accounts with their own uid are served (and written) by mail workers; the rest by `local`.
        func separated(_ local: MaildirProvider) -> SeparatedMaildropProvider? {
            self.separation.map {
                SeparatedMaildropProvider(
                    local: local,
                    helper: $0.helper,
                    identity: $0.identity,
                    firstValidUID: self.configuration.firstValidUID,
                    maximumMessages: self.configuration.limits.maildropMessages,
                    readPool: .singleton,
                    logger: self.logger
                )
            }
        }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        let maildrops: any MaildropProvider
        if let database = self.database {
            // First in the group, so it stops last: sessions finishing their QUIT still reach the database.
            services.append(.init(service: DatabaseService(database: database)))
            maildrops = PostgresMaildropProvider(
                database: database,
                maximumMessages: self.configuration.limits.maildropMessages,
                createsAccounts: self.verifier != nil
            )
        } else {
            maildrops = separated(local) ?? local
        }
        let server = POP3Service(
            configuration: self.configuration,
            tls: self.tls,
            verifier: self.accounts,
            oauth: self.oauth,
            maildrops: maildrops,
            logger: self.logger,
            prebound: self.prebound,
            sharedPenalty: self.sharedPenalty,
            retrievalTimes: self.database.map { DatabaseRetrievalTimes(database: $0) },
            sharedLoginTimes: self.database.map { SharedLoginTimes(database: $0) },
            metrics: self.metrics,
            live: self.live,
            onListening: onListening
        )
        services.append(.init(service: server, successTerminationBehavior: .gracefullyShutdownGroup))
        services.append(
            .init(
                service: HeapTrimmer(openConnections: { server.limiter.openConnections }, logger: self.logger),
                successTerminationBehavior: .ignore
            ))
        var deliveryPool: NIOThreadPool?
        if !self.preboundLMTP.isEmpty {
            let target: any DeliveryTarget
            if let database = self.database {
                // Each copy is a transaction: no thread blocks in fsync here, PostgreSQL's commit does it.
                target = PostgresDeliveryTarget(database: database, createsAccounts: self.verifier != nil)
            } else {
                // Deliveries block in fsync: they get threads of their own, so that concurrent sessions' copies reach
                // the disk together instead of queueing behind the shared pool (as many threads as cores).
                let pool = NIOThreadPool(numberOfThreads: LMTPService.deliveryThreads)
                pool.start()
                deliveryPool = pool
                let writer = MaildirProvider(threadPool: pool, logger: self.logger, indexCacheCapacity: 0)
                target = separated(writer) ?? writer
            }
            let lmtp = LMTPService(
                configuration: self.configuration,
                accounts: self.accounts,
                target: target,
                prebound: self.preboundLMTP,
                mayWriteAsRoot: !self.dropsPrivileges,
                logger: self.logger,
                metrics: self.metrics,
                live: self.live,
                onListening: onListening
            )
            services.append(.init(service: lmtp, successTerminationBehavior: .gracefullyShutdownGroup))
        }
        if let autoconfig = self.autoconfig, let tls = self.tls {
            let live = self.live
            let verifier = self.verifier
            let documents: @Sendable () -> AutoconfigDocuments = {
                AutoconfigDocuments.from(live.current, hostname: autoconfig.hostname, userNames: verifier?.records().map(\.name) ?? [])
            }
            services.append(
                .init(service: AutoconfigService(descriptor: autoconfig.descriptor, tls: tls, documents: documents, logger: self.logger) { address in
                    onListening([BoundListener(kind: .autoconfig, address: address)])
                })
            )
        }
        if let control = self.controlSocket {
            services.append(.init(service: ControlService(descriptor: control.descriptor, path: control.path, server: server, logger: self.logger)))
        }
        if let socket = self.metricsSocket, let registry = self.metrics.registry {
            services.append(
                .init(service: MetricsEndpoint(registry: registry, descriptor: socket, logger: self.logger) { address in
                    onListening([BoundListener(kind: .metrics, address: address)])
                })
            )
        }
        if handleSignals {
            let live = self.live
            services.append(
                .init(
                    service: ReloadService(
                        tls: self.tls, verifier: self.verifier, oauth: self.oauth, metrics: self.metrics, notifier: notifier,
                        configurationFile: self.configuration.sourceFile,
                        reconfigure: { new in
                            let result = live.apply(new)
                            server.configurationChanged()
                            return result
                        },
                        logger: self.logger
                    )
                )
            )
        }
        if let notifier {
            services.append(.init(service: StoppingNotice(notifier: notifier)))
        }
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: handleSignals ? [.sigterm, .sigint] : [],
                logger: self.logger
            )
        )
        do {
            try await group.run()
        } catch {
            try? await deliveryPool?.shutdownGracefully()
            throw error
        }
        try? await deliveryPool?.shutdownGracefully()
    }

    /// Binds `control.socket` (mode 0600), making its folder (0750) if needed. The default path beside the
    /// configuration is skipped with a warning when it is too long for a Unix socket (108 bytes); a configured one
    /// must work.
    static func bindControlSocket(_ configuration: ServerConfiguration, logger: Logger) throws -> (descriptor: CInt, path: String, madeFolder: Bool)? {
        guard let path = configuration.controlSocket else { return nil }
        if path.utf8.count >= 108 {
            guard configuration.controlSocketIsDefault else {
                throw ConfigurationError(key: "control.socket", "\(path) is longer than a Unix socket path may be (107 bytes)")
            }
            logger.warning("no control socket: the default path is too long for a Unix socket; set control.socket", metadata: ["path": "\(path)"])
            return nil
        }
        let folder = (path as NSString).deletingLastPathComponent
        let made: Bool
        do {
            made = try FileSystem.makeDirectories(folder, mode: 0o750)
        } catch {
            throw ConfigurationError(key: "control.socket", "cannot create \(folder): \(error)")
        }
        return (try ListenSocket.bindUnix(path, mode: 0o600, key: "control.socket"), path, made)
    }

    /// What `pop3d check-config` checks beyond loading: the certificate and key load and pass the audit, the
    /// passwd-file parses. Returns the warnings (configuration and certificate); throws a `ConfigurationError`.
    /// The key of SCRAM's dummy salts, kept in `state_dir/scram-dummy.key` (32 random bytes, 0600) so that an unknown
    /// user's salt stays the same across restarts, as a real user's does. Nil (a key per process) when the folder
    /// cannot be written, with a warning.
    static func scramSecret(stateFolder: String, logger: Logger) -> [UInt8]? {
        let path = stateFolder + "/scram-dummy.key"
        do {
            if let existing = try FileSystem.readFile(path, limit: 64), existing.count == 32 { return existing }
            _ = try FileSystem.makeDirectories(stateFolder, mode: 0o700)
            var generator = SystemRandomNumberGenerator()
            let key = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            try FileSystem.atomicReplace(path, with: key, mode: 0o600)
            return key
        } catch {
            logger.warning(
                "cannot keep the SCRAM dummy key in state_dir; unknown users' SCRAM salts change at each restart",
                metadata: ["path": "\(path)", "error": "\(error)"]
            )
            return nil
        }
    }

    public static func check(_ configuration: ServerConfiguration) throws -> [String] {
        var warnings = configuration.warnings
        if configuration.tlsConfigured {
            let tls = try TLSProvider(
                certificatePath: configuration.certificatePath!,
                privateKeyPath: configuration.privateKeyPath!,
                strictSNI: configuration.strictSNI
            )
            warnings += tls.certificateWarnings.map { "tls.certificate: \($0.text)" }
        }
        if configuration.usesPasswdFile {
            do {
                _ = try PasswdFile.parse(String(contentsOfFile: configuration.passwdFile, encoding: .utf8), path: configuration.passwdFile)
            } catch {
                throw ConfigurationError(key: "passwd_file", "\(error)")
            }
        }
        if let settings = configuration.postgres {
            _ = try ServerConfiguration.readDatabasePassword(settings)
        }
        if let settings = configuration.oauth2 {
            do {
                _ = try OAuth2Validator(settings: settings, http: OAuth2HTTPClient())
            } catch {
                throw ConfigurationError(key: "auth.oauth2.jwks", "\(error)")
            }
        }
        return warnings
    }

    /// Checks the database before anything is served (reachable, schema current, commits durable), then returns
    /// the handle the server runs. A check failure stops the start with what to do.
    static func openDatabase(_ settings: PostgresSettings, logger: Logger) throws -> (database: MailDatabase, penaltyKey: [UInt8]) {
        let password = try ServerConfiguration.readDatabasePassword(settings)
        do {
            let probe = try MailDatabase(settings: settings, password: password, logger: logger)
            let (warnings, key) = try runBlocking {
                try await probe.withRunning { database in
                    let warnings = try await database.startupCheck()
                    return (warnings, try await SharedPenalty(database: database).digestKey())
                }
            }
            for warning in warnings { logger.warning("storage.postgres: \(warning)") }
            logger.info("PostgreSQL storage", metadata: ["database": "\(settings.endpoint)/\(settings.database)", "pool": "\(settings.poolSize)"])
            return (try MailDatabase(settings: settings, password: password, logger: logger), key)
        } catch let error as DatabaseError {
            throw ConfigurationError(key: "storage.postgres", error.description)
        }
    }

    /// What SIGHUP does: re-reads the certificate, key and passwd-file without dropping sessions.
    public func reload() {
        ReloadService(tls: self.tls, verifier: self.verifier, oauth: self.oauth, metrics: self.metrics, logger: self.logger).reload()
    }
}

/// Tells systemd STOPPING=1 as soon as graceful shutdown begins (SIGTERM), before sessions get their grace period.
struct StoppingNotice: Service {
    let notifier: SystemdNotifier
    func run() async throws {
        try? await gracefulShutdown()
        self.notifier.stopping()
    }
}

/// The database's connection pool as a service of the daemon's group.
struct DatabaseService: Service {
    let database: MailDatabase
    func run() async throws { await self.database.run() }
}
