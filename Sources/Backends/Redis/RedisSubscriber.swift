import GridKernel
import Logging
import NIOCore
import Synchronization

/// The one pub/sub connection of a ``RedisClient``: it subscribes to the channels its waiters wait
/// on and wakes them when Redis publishes there.
///
/// The scripts publish once per call that made something ready (`{prefix:queue}:arrivals` on enqueue
/// and release, `prefix:{session}:done` with the session's last completion number when tasks became
/// terminal). A waiter (``wait(on:timeout:poll:look:)``) subscribes, looks for itself, and parks on
/// the channel's ``ArrivalSignal`` until a message, its next fallback look (`poll`) or its end; it
/// looks again after every wake, so a spurious wake costs one look and a lost message at most one
/// `poll`. A channel stays subscribed while a waiter uses it.
///
/// The connection is opened by the first waiter and kept until ``close()`` (``RedisClient`` calls it
/// from `close()` and when it is released): it holds no thread and no task, only a socket on
/// SwiftNIO's shared event loops, so it never keeps a process alive. When it breaks, every waiter is
/// woken, and the first to look again reconnects (then each subscribes again); while Redis is
/// unreachable, attempts are spaced by an exponential backoff (50 ms doubling up to 2 s) and waiters
/// fall back to looking every `poll`.
///
/// Isolation: all state is behind one `Mutex`; commands are written under it so that a channel's
/// `SUBSCRIBE` and `UNSUBSCRIBE` reach Redis in the order their waiters came and went. Messages and
/// the close of the connection arrive on the connection's event loop.
final class RedisSubscriber: Sendable {
    private struct Subscription {
        let signal = ArrivalSignal()
        /// Waiters using the channel.
        var users = 0
        /// Waiters parked on the signal now.
        var parked = 0
        /// Whether Redis confirmed the subscription on the current connection.
        var live = false
    }

    private struct State {
        var subscriptions: [String: Subscription] = [:]
        var connection: RedisConnection?
        /// Numbers the connections, so that the close of an old one changes nothing.
        var generation: UInt64 = 0
        /// The connection being opened; others wait for it rather than open their own.
        var opening: EventLoopFuture<RedisConnection?>?
        var retryAt: ContinuousClock.Instant?
        var backoff: Duration = .milliseconds(50)
        /// How many connections were opened (for tests).
        var opened = 0
    }

    private let state = Mutex(State())
    private let configuration: RedisConfiguration
    private let group: any EventLoopGroup
    private let logger: Logger

    init(_ configuration: RedisConfiguration, group: any EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.logger = logger
    }

    /// Calls `look` until it finds something or `timeout` (real time) has passed: once at once, then
    /// after each message on `channel`, and at least every `poll` (every `livePoll` while the channel
    /// is subscribed; `poll` when not given), or sooner when `look` says when to look again (its
    /// second value: e.g. when a delayed message becomes ready).
    ///
    /// - Returns: what `look` found, or `nil` at the timeout.
    /// - Throws: what `look` throws; `CancellationError` as soon as the calling task is cancelled.
    func wait<Found>(
        on channel: String, timeout: Duration, poll: Duration, livePoll: Duration? = nil,
        look: () async throws -> (found: Found?, again: Duration?)
    ) async throws -> Found? {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        if let found = try await look().found { return found }
        guard timeout > .zero else { return nil }
        let signal = register(channel)
        defer { unregister(channel) }
        while true {
            let live = await subscribe(channel)
            let generation = signal.generation
            // Looks after subscribing: what happened before is seen here, what happens later is published.
            let (found, again) = try await look()
            if let found { return found }
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { return nil }
            var pause = min(remaining, live ? livePoll ?? poll : min(poll, retryDelay))
            if let again { pause = min(pause, max(again, .milliseconds(1))) }
            park(channel, 1)
            await signal.wait(after: generation, timeout: pause)
            park(channel, -1)
            try Task.checkCancellation()
        }
    }

    /// Closes the connection; the next waiter opens a new one.
    func close() {
        let connection = state.withLock { state -> RedisConnection? in
            defer {
                state.connection = nil
                state.generation &+= 1
                for key in state.subscriptions.keys { state.subscriptions[key]?.live = false }
            }
            return state.connection
        }
        connection?.close()
    }

    /// How many waiters are parked on `channel` now (for tests: a waiter is parked once it looked and
    /// found nothing).
    func parked(on channel: String) -> Int { state.withLock { $0.subscriptions[channel]?.parked ?? 0 } }

    /// The local port of the current connection, if any (for tests: `CLIENT LIST` names it in `addr`).
    var localPort: Int? { state.withLock { $0.connection?.localPort } }

    /// How many connections were opened so far (for tests).
    var connectionsOpened: Int { state.withLock { $0.opened } }

    // MARK: Subscriptions

    private func register(_ channel: String) -> ArrivalSignal {
        state.withLock { state in
            state.subscriptions[channel, default: Subscription()].users += 1
            return state.subscriptions[channel]!.signal
        }
    }

    private func unregister(_ channel: String) {
        state.withLock { state in
            guard var subscription = state.subscriptions[channel] else { return }
            subscription.users -= 1
            guard subscription.users <= 0 else {
                state.subscriptions[channel] = subscription
                return
            }
            state.subscriptions[channel] = nil
            if subscription.live, let connection = state.connection {
                _ = connection.write([RedisCommand("UNSUBSCRIBE", channel)])
            }
        }
    }

    private func park(_ channel: String, _ change: Int) {
        state.withLock { $0.subscriptions[channel]?.parked += change }
    }

    /// Makes sure `channel` is subscribed on a live connection, opening one if needed; returns whether
    /// it is.
    private func subscribe(_ channel: String) async -> Bool {
        enum Step {
            case live
            case later
            case open(EventLoopPromise<RedisConnection?>, UInt64)
            case join(EventLoopFuture<RedisConnection?>)
            case subscribe(EventLoopFuture<[RedisValue]>, RedisConnection)
        }
        let step = state.withLock { state -> Step in
            if state.subscriptions[channel]?.live == true, state.connection?.isActive == true { return .live }
            if let connection = state.connection, connection.isActive {
                return .subscribe(connection.write([RedisCommand("SUBSCRIBE", channel)]), connection)
            }
            if let opening = state.opening { return .join(opening) }
            if let retryAt = state.retryAt, ContinuousClock.now < retryAt { return .later }
            let promise = group.next().makePromise(of: RedisConnection?.self)
            state.opening = promise.futureResult
            state.generation &+= 1
            return .open(promise, state.generation)
        }
        switch step {
        case .live:
            return true
        case .later:
            return false
        case .open(let promise, let generation):
            promise.succeed(await open(generation))
            return await subscribe(channel, once: true)
        case .join(let opening):
            _ = try? await opening.get()
            return await subscribe(channel, once: true)
        case .subscribe(let reply, let connection):
            return await confirm(channel, reply, on: connection)
        }
    }

    /// After a connection was opened (or failed): subscribes on it, without opening another.
    private func subscribe(_ channel: String, once: Bool) async -> Bool {
        let step = state.withLock { state -> (EventLoopFuture<[RedisValue]>, RedisConnection)? in
            if state.subscriptions[channel]?.live == true, state.connection?.isActive == true { return nil }
            guard let connection = state.connection, connection.isActive else { return nil }
            return (connection.write([RedisCommand("SUBSCRIBE", channel)]), connection)
        }
        guard let (reply, connection) = step else {
            return state.withLock { $0.subscriptions[channel]?.live == true && $0.connection?.isActive == true }
        }
        return await confirm(channel, reply, on: connection)
    }

    private func confirm(_ channel: String, _ reply: EventLoopFuture<[RedisValue]>, on connection: RedisConnection) async -> Bool {
        guard let replies = try? await reply.get(), replies.first?.elements.first?.string == "subscribe" else { return false }
        return state.withLock { state in
            guard state.connection === connection, connection.isActive else { return false }
            guard state.subscriptions[channel] != nil else {
                // Every waiter left meanwhile: nobody needs the subscription any more.
                _ = connection.write([RedisCommand("UNSUBSCRIBE", channel)])
                return false
            }
            state.subscriptions[channel]?.live = true
            return true
        }
    }

    private var retryDelay: Duration {
        state.withLock { state in
            guard let retryAt = state.retryAt else { return .milliseconds(50) }
            return max(ContinuousClock.now.duration(to: retryAt), .milliseconds(1))
        }
    }

    // MARK: The connection

    private func open(_ generation: UInt64) async -> RedisConnection? {
        do {
            let connection = try await RedisConnection.connect(
                configuration, group: group,
                onMessage: { [weak self] channel, _ in self?.deliver(channel) },
                onClose: { [weak self] in self?.lost(generation) }
            )
            let kept = state.withLock { state -> [ArrivalSignal]? in
                state.opening = nil
                guard state.generation == generation, connection.isActive else { return nil }
                state.connection = connection
                state.opened += 1
                state.retryAt = nil
                state.backoff = .milliseconds(50)
                for key in state.subscriptions.keys { state.subscriptions[key]?.live = false }
                return state.subscriptions.values.map(\.signal)
            }
            guard let kept else {
                connection.close()
                return nil
            }
            // Every waiter subscribes again on the new connection (and looks, in case it missed a message).
            for signal in kept { signal.signal() }
            return connection
        } catch {
            let backoff = state.withLock { state -> Duration in
                state.opening = nil
                state.retryAt = ContinuousClock.now + state.backoff
                defer { state.backoff = min(state.backoff * 2, .seconds(2)) }
                return state.backoff
            }
            logger.warning(
                "cannot open the Redis subscriber connection; waiters poll meanwhile",
                metadata: ["endpoint": "\(configuration.endpoint)", "backoff": "\(backoff)"])
            return nil
        }
    }

    private func deliver(_ channel: String) {
        state.withLock { $0.subscriptions[channel]?.signal }?.signal()
    }

    /// The connection closed: every waiter is woken, so that one of them reconnects at once.
    private func lost(_ generation: UInt64) {
        let signals = state.withLock { state -> [ArrivalSignal] in
            guard state.generation == generation else { return [] }
            state.connection = nil
            for key in state.subscriptions.keys { state.subscriptions[key]?.live = false }
            return state.subscriptions.values.map(\.signal)
        }
        if !signals.isEmpty { logger.debug("the Redis subscriber connection closed; reconnecting") }
        for signal in signals { signal.signal() }
    }
}
