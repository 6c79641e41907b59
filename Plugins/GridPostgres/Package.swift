// swift-tools-version: 6.1
import PackageDescription

// An HTC Grid backend built as an outside package would be: it depends on the grid's `GridKernel`
// product (and `GridKernelConformance` for its tests) and on its own libraries, here postgres-nio.
// Its two executables are `htc` and `htc-agent` with the PostgreSQL plugin added (docs/plugins.md).
let package = Package(
    name: "grid-postgres",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "GridPostgres", targets: ["GridPostgres"]),
        .executable(name: "htc-postgres", targets: ["HTCPostgres"]),
        .executable(name: "htc-postgres-agent", targets: ["HTCPostgresAgent"]),
    ],
    dependencies: [
        // The grid, by path; a package elsewhere names its repository and version instead.
        .package(name: "htc-grid", path: "../.."),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // The backend: queue, state and payload store on PostgreSQL.
        .target(
            name: "GridPostgres",
            dependencies: [
                .product(name: "GridKernel", package: "htc-grid"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // `htc` and `htc-agent` with the plugin: the grid's commands run under an installation naming it.
        .executableTarget(
            name: "HTCPostgres",
            dependencies: ["GridPostgres", .product(name: "HTCCore", package: "htc-grid")]
        ),
        .executableTarget(
            name: "HTCPostgresAgent",
            dependencies: ["GridPostgres", .product(name: "HTCCore", package: "htc-grid")]
        ),
        .testTarget(
            name: "GridPostgresTests",
            dependencies: [
                "GridPostgres",
                .product(name: "GridKernel", package: "htc-grid"),
                .product(name: "GridKernelConformance", package: "htc-grid"),
                .product(name: "Logging", package: "swift-log"),
                // Raw SQL for the schema upgrade test (a grid of the first release, written by hand).
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ]
        ),
        // Two htc-postgres-agent processes on PostgreSQL, one of them killed mid-run.
        .testTarget(
            name: "GridPostgresIntegrationTests",
            dependencies: [
                "GridPostgres",
                .product(name: "GridKernel", package: "htc-grid"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
