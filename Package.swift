// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "swift-pop3",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "pop3d", targets: ["pop3d"]),
        .executable(name: "pop3", targets: ["pop3"]),
        .library(name: "POP3Client", targets: ["POP3Client"]),
        .library(name: "POP3Core", targets: ["POP3Core"]),
        .library(name: "POP3NIO", targets: ["POP3NIO"]),
        .library(name: "POP3Server", targets: ["POP3Server"]),
        .library(name: "MailStore", targets: ["MailStore"]),
        .library(name: "MailRetriever", targets: ["MailRetriever"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.8.1"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0", traits: [.defaults, "YAML"]),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.8.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        .systemLibrary(name: "CCrypt", path: "Sources/CCrypt"),
        .systemLibrary(name: "CMalloc", path: "Sources/CMalloc"),
        .target(name: "CPrivSep"),
        .target(name: "SystemIO"),
        .target(
            name: "POP3Core",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(
            name: "SASL",
            dependencies: [
                "POP3Core",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
            ]
        ),
        .target(
            name: "LMTPCore",
            dependencies: ["POP3Core", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(
            name: "POP3NIO",
            dependencies: [
                "POP3Core",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .target(
            name: "Accounts",
            dependencies: [
                "CCrypt", "SystemIO", "SASL",
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "MailStore",
            dependencies: [
                "POP3Core", "SystemIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "MailStorePostgres",
            dependencies: [
                "MailStore", "Accounts", "SASL", "SystemIO", "POP3Core",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "Privileges",
            dependencies: [
                "CPrivSep", "POP3Core", "SystemIO", "MailStore", "Accounts",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "POP3Server",
            dependencies: [
                "Privileges", "MailStorePostgres", "CMalloc",
                "POP3Core", "POP3NIO", "LMTPCore", "SASL", "Accounts", "MailStore", "SystemIO", "POP3Client",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .target(
            name: "POP3Client",
            dependencies: [
                "POP3Core", "POP3NIO", "SASL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "X509", package: "swift-certificates"),
            ]
        ),
        .target(
            name: "MailRetriever",
            dependencies: [
                "POP3Client", "POP3NIO", "SASL", "SystemIO",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .target(
            name: "POP3FuzzTargets",
            dependencies: ["POP3Core", "LMTPCore", "SASL", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .executableTarget(
            name: "POP3Fuzzer",
            dependencies: ["POP3FuzzTargets"]
        ),
        .executableTarget(
            name: "pop3",
            dependencies: [
                "POP3Client", "SASL", "POP3Core", "POP3NIO", "MailRetriever",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
            ]
        ),
        .executableTarget(
            name: "pop3d",
            dependencies: [
                "POP3Server", "Privileges", "SASL", "Accounts", "MailStore", "POP3Client", "MailRetriever", "SystemIO",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(name: "POP3CoreTests", dependencies: ["POP3Core", "POP3FuzzTargets", .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(name: "SASLTests", dependencies: ["SASL"]),
        .testTarget(name: "LMTPCoreTests", dependencies: ["LMTPCore", .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(name: "POP3NIOTests", dependencies: [
            "POP3NIO", "POP3Core",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOTestUtils", package: "swift-nio"),
        ]),
        .testTarget(name: "AccountsTests", dependencies: [
            "Accounts", "SASL", "SystemIO",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .testTarget(name: "MailRetrieverTests", dependencies: ["MailRetriever", "SystemIO", "POP3Client", "POP3Core", .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(name: "MailStoreTests", dependencies: [
            "MailStore", "MailStoreTestSupport", "POP3Core", "SystemIO",
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ]),
        .target(
            name: "MailStoreTestSupport",
            dependencies: [
                "MailStore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/MailStoreTestSupport"
        ),
        .testTarget(name: "PrivilegesTests", dependencies: [
            "Privileges", "MailStore", "MailStoreTestSupport", "Accounts", "CPrivSep", "POP3Core", "SystemIO",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "POP3ServerTests", dependencies: [
            "POP3Server", "MailStorePostgres", "POP3Core", "LMTPCore", "SASL", "Accounts", "MailStore", "POP3Client", "MailRetriever", "SystemIO", "POP3NIO",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
