// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "htc-grid",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "GridKernel", targets: ["GridKernel"]),
        .library(name: "GridKernelConformance", targets: ["GridKernelConformance"]),
        .library(name: "GridSQLite", targets: ["GridSQLite"]),
        .library(name: "GridRedis", targets: ["GridRedis"]),
        .library(name: "GridAWS", targets: ["GridAWS"]),
        .library(name: "GridPlugins", targets: ["GridPlugins"]),
        // The commands as a library, for plugin packages that build their own htc and htc-agent (docs/plugins.md).
        .library(name: "HTCCore", targets: ["HTCCore"]),
        .executable(name: "htc", targets: ["htc"]),
        .executable(name: "htc-agent", targets: ["htc-agent"]),
        .executable(name: "htc-server", targets: ["htc-server"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/vapor/jwt-kit", from: "5.7.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    ],
    targets: [
        // The model, the four backend protocols, the engine and the in-memory reference backends.
        .target(
            name: "GridKernel",
            dependencies: [.product(name: "Logging", package: "swift-log"), .product(name: "CoreMetrics", package: "swift-metrics")]
        ),
        // The public conformance suites every backend runs.
        .target(
            name: "GridKernelConformance",
            dependencies: ["GridKernel"]
        ),
        // Queue, state and payload store in one SQLite file; payloads optionally on local disk.
        .target(
            name: "GridSQLite",
            dependencies: [
                "GridKernel",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Backends/SQLite"
        ),
        // hiredis' command formatter and reply reader (Debian's libhiredis-dev; no pkgConfig, see the notes).
        .systemLibrary(name: "CHiredis", path: "Sources/CHiredis"),
        // Queue, state and payload store on Redis: hiredis for the protocol, SwiftNIO for the connection.
        .target(
            name: "GridRedis",
            dependencies: [
                "GridKernel", "CHiredis",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Backends/Redis"
        ),
        // SQS queue, DynamoDB state store and S3 payload store, over the AWS wire protocols: one SigV4
        // signer, one credentials chain and one retry policy, on async-http-client.
        .target(
            name: "GridAWS",
            dependencies: [
                "GridKernel",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Backends/AWS"
        ),
        // The backend registry: URL scheme to factory.
        .target(
            name: "GridPlugins",
            dependencies: ["GridKernel"],
            path: "Sources/Plugins"
        ),
        // Everything the executables do, as a testable library.
        .target(
            name: "HTCCore",
            dependencies: [
                "GridKernel", "GridSQLite", "GridRedis", "GridAWS", "GridPlugins",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                // `htc-agent --metrics-listen`: the kernel's counters at /metrics.
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                // The Lambda runtime client of `htc-agent --lambda` (a small HTTP/1.1 client).
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                // The agent's pod-deletion-cost annotation, through the Kubernetes API over TLS.
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // The HTTP control plane: routes, authentication and configuration of htc-server.
        .target(
            name: "HTCServer",
            dependencies: [
                "GridKernel", "HTCCore", "GridPlugins",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(name: "htc", dependencies: ["HTCCore"]),
        .executableTarget(name: "htc-server", dependencies: ["HTCServer"]),
        .executableTarget(name: "htc-agent", dependencies: ["HTCCore"]),
        .testTarget(name: "GridKernelTests", dependencies: ["GridKernel", "GridKernelConformance"]),
        .testTarget(name: "GridSQLiteTests", dependencies: ["GridSQLite", "GridKernel", "GridKernelConformance"]),
        .testTarget(name: "GridRedisTests", dependencies: ["GridRedis", "GridKernel", "GridKernelConformance"]),
        .testTarget(
            name: "GridAWSTests",
            dependencies: [
                "GridAWS", "GridKernel", "GridKernelConformance",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "HTCCoreTests",
            dependencies: [
                "HTCCore", "GridKernel", "GridPlugins",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ]
        ),
        .testTarget(
            name: "HTCServerTests",
            dependencies: [
                "HTCServer", "GridKernel", "HTCCore",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .testTarget(
            name: "GridIntegrationTests",
            dependencies: ["HTCCore", "GridKernel", "GridSQLite", "GridAWS", "GridPlugins"],
            path: "IntegrationTests/GridIntegrationTests"
        ),
    ],
    swiftLanguageModes: [.v6]
)
