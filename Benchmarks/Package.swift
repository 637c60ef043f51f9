// swift-tools-version: 6.1
// Micro-benchmarks for swift-pop3 (issue 5), kept out of the main package so that its build, tests and CI are
// unaffected. Run them with `scripts/microbench` from the repository root (see README.md beside this file).
import PackageDescription

let package = Package(
    name: "swift-pop3-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "swift-pop3", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        .executableTarget(
            name: "POP3CoreBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "POP3Core", package: "swift-pop3"),
                .product(name: "POP3NIO", package: "swift-pop3"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Benchmarks/POP3CoreBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v5)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "MailStoreBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "MailStore", package: "swift-pop3"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/MailStoreBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v5)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "MailRetrieverBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "MailRetriever", package: "swift-pop3"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Benchmarks/MailRetrieverBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v5)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
