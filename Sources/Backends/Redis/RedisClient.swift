import GridKernel
import Logging
import NIOCore
import NIOPosix

/// A Lua script run with `EVALSHA`, falling back to `EVAL` when the server does not know it
/// (`NOSCRIPT`, e.g. after a restart).
struct RedisScript: Sendable {
    /// A name for errors and logs.
    let name: String
    /// The Lua source.
    let source: String
}

/// One call of a script: its keys and arguments.
struct RedisScriptCall: Sendable {
    /// The script.
    var script: RedisScript
    /// `KEYS`: the hash-tagged base key(s) the script works under, so Redis Cluster routes the call.
    var keys: [String]
    /// `ARGV`.
    var arguments: [[UInt8]]

    /// The `EVALSHA` (or `EVAL`, when `sha` is nil) command of this call.
    func command(sha: String?) -> RedisCommand {
        var argv: [[UInt8]] = [Array((sha == nil ? "EVAL" : "EVALSHA").utf8), Array((sha ?? script.source).utf8), Array(String(keys.count).utf8)]
        argv += keys.map { Array($0.utf8) }
        argv += arguments
        return RedisCommand(bytes: argv)
    }
}

/// A small pool of pipelined connections to one Redis server, shared by the queue, the state store
/// and the payload store of a process.
///
/// Commands are spread over the connections round-robin; each connection pipelines whatever is sent
/// to it, so a pool of a few connections carries many concurrent callers. A broken connection is
/// replaced on next use; while Redis stays unreachable, attempts are spaced by an exponential backoff
/// (50 ms doubling up to 2 s) and calls fail fast with ``GridError/Code/unavailable``, which the engine
/// retries. No thread ever blocks: I/O runs on SwiftNIO's event loops.
///
/// Waiters (a lease or a completion wait) share one more connection, the ``RedisSubscriber``, opened
/// by the first of them; ``close()`` closes it too, and so does releasing the client.
public actor RedisClient {
    private let configuration: RedisConfiguration
    private let group: any EventLoopGroup
    private let logger: Logger
    private var connections: [RedisConnection?]
    private var next = 0
    private var retryAt: ContinuousClock.Instant?
    private var backoff: Duration = .milliseconds(50)
    private var shas: [String: String] = [:]
    /// How many writes (round trips) this pool has made; lets tests check that batches are batched.
    private(set) var roundTrips = 0
    /// The pub/sub connection that wakes this process' waiters.
    nonisolated let subscriber: RedisSubscriber

    /// Creates a pool; connections are opened on first use.
    public init(_ configuration: RedisConfiguration, logger: Logger = Logger(label: "htc.redis")) {
        self.configuration = configuration
        self.group = MultiThreadedEventLoopGroup.singleton
        self.logger = logger
        connections = Array(repeating: nil, count: max(1, configuration.poolSize))
        subscriber = RedisSubscriber(configuration, group: group, logger: logger)
    }

    deinit {
        subscriber.close()
    }

    /// The configuration the pool was made with.
    nonisolated var settings: RedisConfiguration { configuration }

    /// Sends commands in one write on one connection and returns their replies in order, error
    /// replies included.
    ///
    /// While Redis is unreachable or still loading its data after a restart, the commands were not
    /// run, so they are sent again with backoff for up to ``RedisConfiguration/retryWindow``. When a
    /// connection breaks after the write, the outcome is unknown: `idempotent` commands (reads, and
    /// writes whose repetition is harmless) are sent again; others throw and the engine decides.
    ///
    /// - Throws: ``GridError/Code/unavailable`` when Redis cannot be reached within the retry window
    ///   or the connection breaks under a non-idempotent command.
    func send(_ commands: [RedisCommand], idempotent: Bool = false) async throws -> [RedisValue] {
        let deadline = ContinuousClock.now + configuration.retryWindow
        var pause = Duration.milliseconds(20)
        while true {
            let connection: RedisConnection
            do {
                connection = try await self.connection()
            } catch let error as GridError where error.code == .unavailable {
                guard ContinuousClock.now < deadline else { throw error }
                try await Task.sleep(for: pause)
                pause = min(pause * 2, .seconds(1))
                continue
            }
            roundTrips += 1
            let replies: [RedisValue]
            do {
                replies = try await connection.send(commands)
            } catch {
                drop(connection)
                guard idempotent, ContinuousClock.now < deadline else { throw error }
                try await Task.sleep(for: pause)
                pause = min(pause * 2, .seconds(1))
                continue
            }
            // After a restart Redis answers LOADING to every command until its data is back: nothing ran.
            // (No command, no reply: not loading — `allSatisfy` of nothing would hold for the whole
            // retry window.)
            let loading = !replies.isEmpty && replies.allSatisfy {
                if case .error(let message) = $0 { return message.hasPrefix("LOADING") }
                return false
            }
            guard loading, ContinuousClock.now < deadline else { return replies }
            try await Task.sleep(for: pause)
            pause = min(pause * 2, .seconds(1))
        }
    }

    /// Runs script calls in one pipelined write and returns their replies in order; `idempotent` as
    /// in ``send(_:idempotent:)``.
    ///
    /// - Throws: ``GridError/Code/unavailable`` when Redis cannot be reached; a script's error reply as
    ///   ``RedisValue/gridError(_:context:)`` maps it.
    func run(_ calls: [RedisScriptCall], idempotent: Bool = false) async throws -> [RedisValue] {
        guard !calls.isEmpty else { return [] }
        var missing: [RedisScript] = []
        for call in calls where shas[call.script.name] == nil && !missing.contains(where: { $0.name == call.script.name }) {
            missing.append(call.script)
        }
        if !missing.isEmpty {
            let loaded = try await send(missing.map { RedisCommand("SCRIPT", "LOAD", $0.source) }, idempotent: true)
            for (script, reply) in zip(missing, loaded) {
                guard let sha = try reply.checked().string else {
                    throw GridError(.internalError, "SCRIPT LOAD of \(script.name) returned no digest", backend: "redis")
                }
                shas[script.name] = sha
            }
        }
        var replies = try await send(calls.map { $0.command(sha: shas[$0.script.name]) }, idempotent: idempotent)
        let unknown = replies.indices.filter {
            if case .error(let message) = replies[$0] { return message.hasPrefix("NOSCRIPT") }
            return false
        }
        if !unknown.isEmpty {
            logger.debug("Redis lost its scripts (restart?); sending their source", metadata: ["count": "\(unknown.count)"])
            let retried = try await send(unknown.map { calls[$0].command(sha: nil) }, idempotent: idempotent)
            for (index, reply) in zip(unknown, retried) { replies[index] = reply }
        }
        for (call, reply) in zip(calls, replies) {
            if case .error(let message) = reply {
                throw RedisValue.gridError(message, context: "script \(call.script.name) failed")
            }
        }
        return replies
    }

    /// Closes every connection, the subscriber's included.
    public func close() {
        subscriber.close()
        for case let connection? in connections { connection.close() }
        connections = Array(repeating: nil, count: connections.count)
    }

    private func connection() async throws -> RedisConnection {
        let slot = next
        next = (next + 1) % connections.count
        if let connection = connections[slot], connection.isActive { return connection }
        if let retryAt, ContinuousClock.now < retryAt {
            throw GridError.unavailable("\(configuration.endpoint) is unreachable; the next attempt is due in \(ContinuousClock.now.duration(to: retryAt))", backend: "redis")
        }
        do {
            let connection = try await RedisConnection.connect(configuration, group: group)
            if let raced = connections[slot], raced.isActive {
                connection.close()
                return raced
            }
            connections[slot] = connection
            retryAt = nil
            backoff = .milliseconds(50)
            return connection
        } catch {
            retryAt = ContinuousClock.now + backoff
            logger.warning("cannot connect to Redis; retrying with backoff", metadata: ["endpoint": "\(configuration.endpoint)", "backoff": "\(backoff)"])
            backoff = min(backoff * 2, .seconds(2))
            throw error
        }
    }

    private func drop(_ connection: RedisConnection) {
        guard !connection.isActive else { return }
        for index in connections.indices where connections[index] === connection { connections[index] = nil }
    }
}

extension RedisClient {
    /// Asks the server whether it persists anything (`appendonly`, `save`): a warning when it keeps
    /// nothing across a restart; none when it does, or when `CONFIG` is refused (managed services rename
    /// or forbid it, and persist on their own terms).
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable`` when Redis cannot be reached.
    func persistenceWarnings() async throws -> [String] {
        let replies = try await send([RedisCommand("CONFIG", "GET", "appendonly"), RedisCommand("CONFIG", "GET", "save")], idempotent: true)
        func value(_ reply: RedisValue) -> String? {
            guard case .array(let items) = reply, items.count >= 2 else { return nil }
            return items[1].string
        }
        guard let appendOnly = value(replies[0]), let save = value(replies[1]) else { return [] }
        guard appendOnly.lowercased() != "yes", save.trimmingCharacters(in: .whitespaces).isEmpty else { return [] }
        return [
            "Redis at \(configuration.host):\(configuration.port) keeps nothing across a restart (appendonly no, save \"\"): "
                + "every session, task and result is lost when it restarts. Turn persistence on (appendonly yes; see docs/backends.md)"
        ]
    }
}

extension RedisStateStore: DurabilityReporting {
    public func durabilityWarnings() async throws -> [String] { try await client.persistenceWarnings() }
}

extension RedisTaskQueue: DurabilityReporting {
    public func durabilityWarnings() async throws -> [String] { try await client.persistenceWarnings() }
}

extension RedisPayloadStore: DurabilityReporting {
    public func durabilityWarnings() async throws -> [String] { try await client.persistenceWarnings() }
}
