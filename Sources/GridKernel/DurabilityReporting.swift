/// A backend that can tell whether what it stores survives a restart of its server.
///
/// A Redis server without persistence (no append-only file, no snapshots) loses every session when it
/// restarts, with nothing to say so; backends on such servers conform so that agents and the server warn
/// at start and `/readyz` says it. Implement it by asking the server how it is configured; when it does
/// not let you ask (a managed service that hides its configuration), return no warning.
public protocol DurabilityReporting: Sendable {
    /// What the backend would lose on a restart of its server, one sentence each saying what to change;
    /// empty when it keeps everything.
    ///
    /// - Throws: ``GridError/Code/unavailable`` when the server cannot be reached.
    func durabilityWarnings() async throws -> [String]
}

extension GridBackends {
    /// The warnings of the backends that report their durability, each once (the three stores of one
    /// Redis server say the same); a backend that cannot be reached now says nothing.
    public func durabilityWarnings() async -> [String] {
        var warnings: [String] = []
        for store in [queue as Any, state as Any, payloads as Any] {
            guard let reporting = store as? any DurabilityReporting else { continue }
            for warning in (try? await reporting.durabilityWarnings()) ?? [] where !warnings.contains(warning) {
                warnings.append(warning)
            }
        }
        return warnings
    }
}
