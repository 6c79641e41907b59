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
        .library(name: "GridPlugins", targets: ["GridPlugins"]),
        .executable(name: "htc", targets: ["htc"]),
        .executable(name: "htc-agent", targets: ["htc-agent"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
    ],
    targets: [
        // The model, the four backend protocols, the engine and the in-memory reference backends.
        .target(
            name: "GridKernel",
            dependencies: [.product(name: "Logging", package: "swift-log")]
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
                "GridKernel", "GridSQLite", "GridRedis", "GridPlugins",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(name: "htc", dependencies: ["HTCCore"]),
        .executableTarget(name: "htc-agent", dependencies: ["HTCCore"]),
        .testTarget(name: "GridKernelTests", dependencies: ["GridKernel", "GridKernelConformance"]),
        .testTarget(name: "GridSQLiteTests", dependencies: ["GridSQLite", "GridKernel", "GridKernelConformance"]),
        .testTarget(name: "GridRedisTests", dependencies: ["GridRedis", "GridKernel", "GridKernelConformance"]),
        .testTarget(name: "HTCCoreTests", dependencies: ["HTCCore", "GridKernel", "GridPlugins"]),
        .testTarget(
            name: "GridIntegrationTests",
            dependencies: ["HTCCore", "GridKernel", "GridSQLite", "GridPlugins"],
            path: "IntegrationTests/GridIntegrationTests"
        ),
    ],
    swiftLanguageModes: [.v6]
)
