import Foundation
import GridKernel
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The Lambda Runtime Interface Emulator as a child of the agent (`htc-agent --lambda-emulator COMMAND`):
/// started, watched, killed and started again.
///
/// The command line is run by `/bin/sh -c` in a process group of its own, with `HTC_LAMBDA_PORT` set to
/// the port of the `--lambda` URL, on which it must accept connections within ``startTimeout``. Its
/// output goes to the agent's stderr. When an invocation is abandoned (cancel, time-out), the handler
/// calls ``restart(because:)``: the group gets SIGTERM (SIGKILL after ``killGrace``) and a new emulator
/// starts, instead of waiting for the old one to finish. An emulator that exits on its own is started
/// again after a back-off (0.5 s, doubling to 30 s); only the invocation it was running fails.
///
/// Run it as a service (``run()``) before the agent in the same `ServiceGroup`, so that it stops after
/// the agent on shutdown. If the first emulator never accepts connections, ``run()`` throws.
public final class LambdaEmulatorProcess: Service, Sendable {
    /// The shell command line.
    public let command: String
    /// The address the emulator listens on (from the `--lambda` URL).
    public let host: String
    /// The port the emulator listens on.
    public let port: Int
    /// How long an emulator may take to accept connections. Default 60 s.
    public let startTimeout: Duration
    /// How long a stopped emulator gets between SIGTERM and SIGKILL. Default 2 s.
    public let killGrace: Duration

    private struct State {
        var child: ChildProcess?
        var ready = false
        var stopped = false
        /// Set by restart(because:) so that the supervisor starts the next emulator without a back-off.
        var restartRequested = false
        var readyWaiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var nextWaiter: UInt64 = 0
        var lastOutput = OutputTail()
    }

    private let state = Mutex(State())
    private let logger: Logger
    private let restartedAfterAbandon = Counter(label: LambdaMetricName.emulatorRestarts, dimensions: [("reason", "abandoned")])
    private let restartedAfterExit = Counter(label: LambdaMetricName.emulatorRestarts, dimensions: [("reason", "exited")])

    /// Creates the supervisor of an emulator that `command` starts on `host:port`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for an empty command or a host that is not
    ///   this machine's.
    public init(
        command: String, host: String, port: Int, startTimeout: Duration = .seconds(60), killGrace: Duration = .seconds(2),
        logger: Logger
    ) throws {
        guard !command.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw GridError.invalidArgument("--lambda-emulator needs a command, e.g. --lambda-emulator 'aws-lambda-rie python3 -m awslambdaric app.handler'")
        }
        guard ["127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"].contains(host.lowercased()) else {
            throw GridError.invalidArgument("--lambda-emulator starts the emulator on this machine: give --lambda http://127.0.0.1:PORT, not \(host)")
        }
        // An emulator that exits without reading must not kill the agent with SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        self.command = command
        self.host = host == "0.0.0.0" ? "127.0.0.1" : host
        self.port = port
        self.startTimeout = startTimeout
        self.killGrace = killGrace
        self.logger = logger
    }

    /// Waits until an emulator accepts connections, at most ``startTimeout``.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable`` when none does in time or the agent is
    ///   stopping; `CancellationError`.
    func waitUntilReady() async throws {
        if state.withLock({ $0.ready }) { return }
        let limit = startTimeout
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.readiness() }
            group.addTask {
                try await Task.sleep(for: limit)
                throw GridError.unavailable(
                    "the Lambda emulator (--lambda-emulator) did not accept connections on \(self.host):\(self.port) within \(limit)\(self.outputTail)")
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }

    private func readiness() async throws {
        let number = state.withLock { state in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let result: Result<Void, any Error>? = state.withLock { state in
                    if state.ready { return .success(()) }
                    if state.stopped { return .failure(GridError.unavailable("the agent is stopping its Lambda emulator")) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.readyWaiters[number] = continuation
                    return nil
                }
                if let result { continuation.resume(with: result) }
            }
        } onCancel: {
            state.withLock { $0.readyWaiters.removeValue(forKey: number) }?.resume(throwing: CancellationError())
        }
    }

    /// Kills the running emulator (its process group) so that a new one starts; invocations wait for it.
    /// The abandoned invocation dies with the old one.
    func restart(because reason: String) {
        let child: ChildProcess? = state.withLock { state in
            state.ready = false
            // Between two emulators there is nothing to kill: the next one starts anyway.
            if state.child != nil { state.restartRequested = true }
            return state.child
        }
        restartedAfterAbandon.increment()
        logger.warning("restarting the Lambda emulator: \(reason)", metadata: ["pid": "\(child.map { String($0.pid) } ?? "-")"])
        child?.terminate(grace: killGrace)
    }

    /// Starts the emulator and keeps one running until the graceful shutdown of the service group (or
    /// cancellation), then stops it.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` when something else already listens on the
    ///   port, or when the first emulator exits or does not accept connections in time.
    public func run() async throws {
        defer {
            let waiters: [CheckedContinuation<Void, any Error>] = state.withLock { state in
                state.stopped = true
                state.ready = false
                defer { state.readyWaiters.removeAll() }
                return Array(state.readyWaiters.values)
            }
            for waiter in waiters { waiter.resume(throwing: GridError.unavailable("the agent stopped its Lambda emulator")) }
        }
        if await HTTP1Client.accepts(host: host, port: port) {
            throw GridError.invalidArgument(
                "something already listens on \(host):\(port): --lambda-emulator starts its own emulator there; stop the other one or choose another --lambda port")
        }
        try await cancelWhenGracefulShutdown { try await self.supervise() }
    }

    private func supervise() async throws {
        var everReady = false
        var failures = 0
        while !Task.isCancelled {
            let started = ContinuousClock.now
            let (pid, status, becameReady) = try await runOnce()
            everReady = everReady || becameReady
            if Task.isCancelled { return }
            let requested = state.withLock { state in
                defer { state.restartRequested = false }
                return state.restartRequested
            }
            if requested {
                failures = 0
                await waitUntilPortIsFree()
                continue
            }
            guard everReady else {
                throw GridError.invalidArgument(
                    "--lambda-emulator '\(command)' \(Self.describe(status)) before accepting connections on \(host):\(port) (it must listen on the --lambda URL's port, $HTC_LAMBDA_PORT)\(outputTail)")
            }
            failures = ContinuousClock.now - started > .seconds(60) ? 1 : failures + 1
            let delay = min(Duration.milliseconds(500) * (1 << min(failures - 1, 6)), .seconds(30))
            restartedAfterExit.increment()
            logger.error(
                "the Lambda emulator \(Self.describe(status)); starting it again in \(delay)\(outputTail)",
                metadata: ["pid": "\(pid)"])
            // A shutdown during the back-off is no failure.
            guard (try? await Task.sleep(for: delay)) != nil else { return }
            await waitUntilPortIsFree()
        }
    }

    /// Starts one emulator, marks it ready once it accepts connections, and waits for it to exit; a
    /// cancellation stops it. Returns its process id, its exit status (minus the signal that killed it)
    /// and whether it ever accepted connections.
    private func runOnce() async throws -> (pid: pid_t, status: Int32, ready: Bool) {
        // Led like an --exec command: its whole group dies with the agent, and nothing of it outlives
        // a restart.
        let child = try ChildProcess.spawn(["/bin/sh", "-c", ExecHandler.leader, "htc-lambda-emulator", command], environment: ["HTC_LAMBDA_PORT": String(port)])
        close(child.stdin)
        let output = state.withLock { state in
            state.child = child
            state.restartRequested = false
            state.lastOutput = OutputTail()
            return OutputForwarder(tail: { bytes in self.state.withLock { $0.lastOutput.append(bytes) } })
        }
        output.forward(child.stdout)
        output.forward(child.stderr)
        logger.info("started the Lambda emulator", metadata: ["pid": "\(child.pid)", "command": "\(command)"])
        enum Event: Sendable {
            case exited(Int32)
            case ready(Bool)
        }
        var ready = false
        let status = await withTaskCancellationHandler {
            await withTaskGroup(of: Event.self) { group in
                group.addTask { .exited(await child.waitForExit()) }
                group.addTask { .ready(await self.waitForConnections(child)) }
                var status: Int32?
                while let event = await group.next() {
                    switch event {
                    case .exited(let code):
                        status = code
                        // An emulator that exited never becomes ready: stop looking.
                        group.cancelAll()
                    case .ready(let accepted): ready = accepted
                    }
                }
                return status ?? -1
            }
        } onCancel: {
            child.terminate(grace: killGrace)
        }
        state.withLock { state in
            state.ready = false
            if state.child === child { state.child = nil }
        }
        await output.drained(within: .seconds(1))
        return (child.pid, status, ready)
    }

    /// Polls the port until the emulator accepts connections (then marks it ready and returns true),
    /// exits (the caller cancels this) or runs out of ``startTimeout`` (then stops it).
    private func waitForConnections(_ child: ChildProcess) async -> Bool {
        let deadline = ContinuousClock.now + startTimeout
        while !Task.isCancelled {
            if await HTTP1Client.accepts(host: host, port: port) { return markReady(child) }
            guard ContinuousClock.now < deadline else {
                logger.error("the Lambda emulator did not accept connections on \(host):\(port) within \(startTimeout); stopping it")
                child.terminate(grace: killGrace)
                return false
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    /// Marks the emulator ready (unless a restart was asked for meanwhile) and wakes the invocations
    /// waiting for it.
    private func markReady(_ child: ChildProcess) -> Bool {
        let waiters: [CheckedContinuation<Void, any Error>]? = state.withLock { state in
            guard state.child === child, !state.restartRequested else { return nil }
            state.ready = true
            defer { state.readyWaiters.removeAll() }
            return Array(state.readyWaiters.values)
        }
        guard let waiters else { return false }
        logger.info("the Lambda emulator accepts connections", metadata: ["pid": "\(child.pid)", "port": "\(port)"])
        for waiter in waiters { waiter.resume() }
        return true
    }

    /// Waits (at most ``killGrace`` and 5 s more) until nothing listens on the port any more: a
    /// grandchild of the shell may outlive it for a moment, and the next emulator must not be taken
    /// for ready because the old one still answers.
    private func waitUntilPortIsFree() async {
        let deadline = ContinuousClock.now + killGrace + .seconds(5)
        while await HTTP1Client.accepts(host: host, port: port), ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    private var outputTail: String {
        let text = state.withLock { $0.lastOutput.text }
        return text.isEmpty ? "" : "; its last output: \(text)"
    }

    private static func describe(_ status: Int32) -> String {
        status >= 0 ? "exited with status \(status)" : "was killed by signal \(-status)"
    }
}

/// The last 2 KiB an emulator wrote, for error messages.
private struct OutputTail {
    private var bytes: [UInt8] = []
    private let limit = 2048

    mutating func append(_ chunk: ArraySlice<UInt8>) {
        bytes.append(contentsOf: chunk.suffix(limit))
        if bytes.count > limit { bytes.removeFirst(bytes.count - limit) }
    }

    var text: String { String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
}

/// Copies a child's output pipes to the agent's stderr as they are written, each on a thread of its
/// own (the reads block), and hands every chunk to `tail`.
private final class OutputForwarder: Sendable {
    private let tail: @Sendable (ArraySlice<UInt8>) -> Void
    /// The pipes still open, and who waits for them to close.
    private let open = Mutex<(count: Int, waiter: CheckedContinuation<Void, Never>?)>((0, nil))

    init(tail: @escaping @Sendable (ArraySlice<UInt8>) -> Void) {
        self.tail = tail
    }

    func forward(_ fd: Int32) {
        open.withLock { $0.count += 1 }
        let thread = Thread { [self] in
            var chunk = [UInt8](repeating: 0, count: 16 * 1024)
            while true {
                let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { break }
                chunk.withUnsafeBytes { buffer in
                    var offset = 0
                    while offset < count {
                        let written = write(STDERR_FILENO, buffer.baseAddress! + offset, count - offset)
                        if written < 0 && errno == EINTR { continue }
                        guard written > 0 else { break }
                        offset += written
                    }
                }
                tail(chunk[0..<count])
            }
            close(fd)
            let waiter: CheckedContinuation<Void, Never>? = open.withLock { open in
                open.count -= 1
                guard open.count == 0 else { return nil }
                defer { open.waiter = nil }
                return open.waiter
            }
            waiter?.resume()
        }
        thread.stackSize = 256 * 1024
        thread.start()
    }

    /// Waits until every pipe reached its end, at most `limit`: once the child exited, its last words
    /// belong in the error message, but a grandchild may hold the pipes open for longer.
    func drained(within limit: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        let closed = self.open.withLock { open in
                            if open.count == 0 || Task.isCancelled { return true }
                            open.waiter = continuation
                            return false
                        }
                        if closed { continuation.resume() }
                    }
                } onCancel: {
                    self.open.withLock { open in
                        defer { open.waiter = nil }
                        return open.waiter
                    }?.resume()
                }
            }
            group.addTask { try? await Task.sleep(for: limit) }
            await group.next()
            group.cancelAll()
        }
    }
}
