import GridKernel
import Logging
import NIOSSL
import PostgresNIO
import Synchronization

/// The notifications of one PostgreSQL server, fanned out to the waiters of this process: one
/// connection of its own (not one of the pool's) `LISTEN`s to every channel a waiter asked for, and a
/// notification rings the ``GridKernel/ArrivalSignal`` of its topic: the channel and the payload up to
/// its last `:` (a session id for completions, nothing for arrivals).
///
/// The connection is opened when the first waiter comes, so a process that never waits has none.
/// While it is down (not opened yet, refused, lost), waiters are told so and poll; when it comes back,
/// every waiter is woken, since notifications sent in the meantime were lost. Channels are never
/// unlistened: a process waits on the same few channels again and again.
///
/// Isolation: the state is behind a `Mutex`; ``run()`` is the only task that uses the connection.
final class PostgresNotifications: Sendable {
    /// What a waiter waits for.
    struct Topic: Hashable, Sendable {
        /// The channel, as given to `LISTEN` and `pg_notify`.
        var channel: String
        /// The payload up to its last `:`; the whole payload when it has none.
        var key: String
    }

    /// A waiter's view of its topic, given by ``withSignal(_:until:_:)``.
    struct Subscription: Sendable {
        fileprivate let topic: Topic
        fileprivate let signal: ArrivalSignal
        fileprivate let owner: PostgresNotifications

        /// The number of notifications of the topic so far: read it before looking.
        var generation: UInt64 { signal.generation }

        /// Returns after a notification of the topic later than `generation`, after `timeout`, or on
        /// cancellation.
        func wait(after generation: UInt64, timeout: Duration) async {
            owner.state.withLock { $0.topics[topic]?.parked += 1 }
            defer { owner.state.withLock { $0.topics[topic]?.parked -= 1 } }
            await signal.wait(after: generation, timeout: timeout)
        }
    }

    private struct Subscribers {
        let signal = ArrivalSignal()
        var count = 0
        /// How many of them wait in ``Subscription/wait(after:timeout:)`` now.
        var parked = 0
    }

    private struct State {
        var topics: [Topic: Subscribers] = [:]
        /// The channels waiters asked for, in the order they asked.
        var channels: [String] = []
        /// The channels `LISTEN`ed on the current connection.
        var listening: Set<String> = []
        /// Whether the last attempt to connect or to listen failed (waiters then poll without waiting for it).
        var down = false
        /// Connections opened so far.
        var connections = 0
    }

    private let state = Mutex(State())
    /// Rung when a channel is asked for: the connection's task listens to it.
    private let requested = ArrivalSignal()
    /// Rung when a channel is listened to, or when the connection failed.
    private let changed = ArrivalSignal()
    private let configuration: PostgresConfiguration
    private let logger: Logger
    /// The first pause before connecting again; it doubles up to ``maximumRetryDelay``.
    private let retryDelay: Duration
    private static let maximumRetryDelay: Duration = .seconds(5)

    /// Creates the fan-out; ``run()`` does the work.
    init(_ configuration: PostgresConfiguration, logger: Logger, retryDelay: Duration = .milliseconds(100)) {
        self.configuration = configuration
        self.logger = logger
        self.retryDelay = retryDelay
    }

    /// Whether notifications of `channel` reach this process now.
    func isListening(_ channel: String) -> Bool {
        state.withLock { $0.listening.contains(channel) }
    }

    /// How many waiters of `topic` wait for a notification now (for tests: a write made once they wait
    /// can only reach them through a notification or their fallback poll).
    func parkedWaiters(_ topic: Topic) -> Int {
        state.withLock { $0.topics[topic]?.parked ?? 0 }
    }

    /// How many connections were opened so far (for tests).
    var connections: Int { state.withLock { $0.connections } }

    /// Runs `body` with a subscription to `topic`, once its channel is listened to, or the listener is known
    /// to be down, or 2 s or `deadline` passed, or the task is cancelled: when the channel is listened
    /// to, a look `body` makes after reading the subscription's generation misses no notification sent after it.
    func withSignal<Result>(
        _ topic: Topic, until deadline: ContinuousClock.Instant, _ body: (Subscription) async throws -> Result
    ) async throws -> Result {
        let (signal, isNew) = state.withLock { state in
            state.topics[topic, default: Subscribers()].count += 1
            let isNew = !state.channels.contains(topic.channel)
            if isNew { state.channels.append(topic.channel) }
            return (state.topics[topic]!.signal, isNew)
        }
        defer {
            state.withLock { state in
                state.topics[topic]?.count -= 1
                if state.topics[topic]?.count == 0 { state.topics[topic] = nil }
            }
        }
        if isNew { requested.signal() }
        // A server that does not answer (no refusal either) delays a waiter's first look by at most this.
        let limit = min(deadline, ContinuousClock.now.advanced(by: .seconds(2)))
        while !Task.isCancelled {
            let generation = changed.generation
            let ready = state.withLock { $0.listening.contains(topic.channel) || $0.down }
            let remaining = limit - ContinuousClock.now
            if ready || remaining <= .zero { break }
            await changed.wait(after: generation, timeout: remaining)
        }
        return try await body(Subscription(topic: topic, signal: signal, owner: self))
    }

    /// Connects, listens to the channels asked for and dispatches what arrives, connecting again after
    /// a failure, until cancelled. Waits for the first channel before connecting.
    func run() async {
        var delay = retryDelay
        while !Task.isCancelled {
            let generation = requested.generation
            if state.withLock({ $0.channels.isEmpty }) {
                await requested.wait(after: generation, timeout: .seconds(3_600))
                continue
            }
            do {
                try await listen()
            } catch is CancellationError {
                return
            } catch {
                logger.debug("PostgreSQL notifications are down; waiters poll until they are back", metadata: ["error": "\(error)"])
            }
            let listened = state.withLock { state in
                defer {
                    state.listening = []
                    state.down = true
                }
                return !state.listening.isEmpty
            }
            wakeEveryone()
            // A connection that worked is opened again after 0.1 s; one that failed after a growing pause.
            delay = listened ? retryDelay : min(delay * 2, Self.maximumRetryDelay)
            try? await Task.sleep(for: delay)
        }
    }

    /// One connection: listens to every channel asked for (those asked later too) until it fails.
    private func listen() async throws {
        let connection = try await PostgresConnection.connect(
            configuration: try connectionConfiguration(), id: 0, logger: logger)
        state.withLock { $0.connections += 1 }
        do {
            try await withThrowingTaskGroup(of: Bool.self) { group in
                var started: Set<String> = []
                while true {
                    let generation = requested.generation
                    for channel in state.withLock({ $0.channels }) where !started.contains(channel) {
                        started.insert(channel)
                        group.addTask {
                            try await connection.listen(on: channel) { notifications in
                                self.listened(channel)
                                for try await notification in notifications { self.received(channel, notification.payload) }
                            }
                            throw GridError.unavailable("the notifications of \(channel) ended", backend: PostgresDatabase.backendName)
                        }
                    }
                    group.addTask {
                        await self.requested.wait(after: generation, timeout: .seconds(3_600))
                        return true
                    }
                    // Only the request waiter returns; a listener ending means the connection is gone.
                    while try await group.next() != true {}
                }
            }
        } catch {
            try? await connection.close()
            throw error
        }
    }

    private func connectionConfiguration() throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS
        switch configuration.tls {
        case .disable: tls = .disable
        case .prefer: tls = .prefer(try NIOSSLContext(configuration: .makeClientConfiguration()))
        case .require: tls = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
        }
        return PostgresConnection.Configuration(
            host: configuration.host, port: configuration.port, username: configuration.user, password: configuration.password,
            database: configuration.database, tls: tls)
    }

    /// `channel` is listened to: its waiters stop waiting for that, and look again (they may have missed
    /// a notification while it was not).
    private func listened(_ channel: String) {
        let signals = state.withLock { state in
            state.listening.insert(channel)
            state.down = false
            return state.topics.filter { $0.key.channel == channel }.map(\.value.signal)
        }
        changed.signal()
        for signal in signals { signal.signal() }
    }

    private func received(_ channel: String, _ payload: String) {
        let key = payload.lastIndex(of: ":").map { String(payload[..<$0]) } ?? payload
        state.withLock { $0.topics[Topic(channel: channel, key: key)]?.signal }?.signal()
    }

    private func wakeEveryone() {
        let signals = state.withLock { $0.topics.values.map(\.signal) }
        changed.signal()
        for signal in signals { signal.signal() }
    }
}
