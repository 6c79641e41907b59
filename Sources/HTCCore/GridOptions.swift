import ArgumentParser
import Foundation
import GridKernel
import GridPlugins
import Logging

/// Reads `HTC_*` variables; flags take precedence over them, and they over defaults.
public struct Environment: Sendable {
    /// The variables, by name.
    public var values: [String: String]

    /// Wraps a set of variables; the process environment by default.
    public init(_ values: [String: String] = ProcessInfo.processInfo.environment) { self.values = values }

    /// The variable's value, or `nil` when it is unset or empty.
    public func string(_ name: String) -> String? {
        guard let value = values[name], !value.isEmpty else { return nil }
        return value
    }

    /// The variable as an integer, or `nil` when it is unset.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` if it is not an integer.
    public func int(_ name: String) throws -> Int? {
        guard let text = string(name) else { return nil }
        guard let value = Int(text) else { throw GridError.invalidArgument("\(name)=\(text) is not an integer") }
        return value
    }

    /// Whether the variable is set to a true value (`1`, `true`, `yes`, `on`); `false` when unset.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for any other value.
    public func bool(_ name: String) throws -> Bool {
        guard let text = string(name)?.lowercased() else { return false }
        switch text {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: throw GridError.invalidArgument("\(name)=\(text) is not a boolean (1/0, true/false)")
        }
    }

    /// The variable as a non-negative number of seconds, or `nil` when it is unset.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` if it is not such a number.
    public func seconds(_ name: String) throws -> Double? {
        guard let text = string(name) else { return nil }
        guard let value = Double(text), value >= 0 else {
            throw GridError.invalidArgument("\(name)=\(text) is not a number of seconds")
        }
        return value
    }
}

/// The backend flags shared by every command: `--grid`, `--queue`, `--state`, `--payload`.
public struct GridOptions: ParsableArguments, Sendable {
    @Option(help: "URL setting all three backends, e.g. sqlite:///var/lib/htc/grid.db (env HTC_GRID).")
    var grid: String?

    @Option(help: "Task queue URL; overrides --grid (env HTC_QUEUE).")
    var queue: String?

    @Option(help: "State store URL; overrides --grid (env HTC_STATE).")
    var state: String?

    @Option(help: "Payload store URL, e.g. file:///var/lib/htc/payloads; overrides --grid (env HTC_PAYLOAD).")
    var payload: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (env HTC_LOG_LEVEL).")
    var logLevel: String?

    /// Creates the options (ArgumentParser fills them in).
    public init() {}

    /// The URLs after applying the environment.
    public func urls(_ environment: Environment = Environment()) -> GridURLs {
        GridURLs(
            grid: grid ?? environment.string("HTC_GRID"),
            queue: queue ?? environment.string("HTC_QUEUE"),
            state: state ?? environment.string("HTC_STATE"),
            payload: payload ?? environment.string("HTC_PAYLOAD")
        )
    }

    /// The log level from `--log-level` or `HTC_LOG_LEVEL`, or `fallback`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for an unknown level.
    public func level(_ environment: Environment = Environment(), default fallback: Logger.Level = .info) throws -> Logger.Level {
        guard let text = logLevel ?? environment.string("HTC_LOG_LEVEL") else { return fallback }
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw GridError.invalidArgument("log level '\(text)' is not one of trace, debug, info, notice, warning, error, critical")
        }
        return level
    }

    /// Builds the backends named by the flags and the environment.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a missing or unknown URL; what the
    ///   plugin's factory throws.
    public func makeBackends(logger: Logger) async throws -> GridBackends {
        try await BackendRegistry.installed.makeBackends(urls(), context: BackendContext(logger: logger))
    }
}

/// Bootstraps logging once per process, to stderr.
public enum LoggingSetup {
    /// Sends every logger's output to stderr at `level`; call once, from an executable.
    public static func bootstrap(level: Logger.Level) {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

extension ReaperConfiguration {
    /// The reaper of `htc-agent` and `htc-server`: `--reaper-interval` (`HTC_REAPER_INTERVAL`, default
    /// 5 s; 0 for no reaper, `nil`) and `--submission-grace` (`HTC_SUBMISSION_GRACE`, default 120 s).
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a value that is not a number of
    ///   seconds, or a grace that is not positive.
    public static func settings(interval: Double?, submissionGrace: Double?, _ environment: Environment) throws -> ReaperConfiguration? {
        let seconds = try interval ?? environment.seconds("HTC_REAPER_INTERVAL") ?? 5
        guard seconds > 0 else { return nil }
        var configuration = ReaperConfiguration(interval: Duration(timeInterval: seconds))
        if let grace = try submissionGrace ?? environment.seconds("HTC_SUBMISSION_GRACE") {
            guard grace > 0 else { throw GridError.invalidArgument("--submission-grace (HTC_SUBMISSION_GRACE) must be positive, got \(grace)") }
            configuration.submissionGrace = Duration(timeInterval: grace)
        }
        return configuration
    }
}
