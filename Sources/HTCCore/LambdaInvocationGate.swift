import GridKernel
import Logging
import Metrics
import Synchronization

/// The names of `htc-agent --lambda`'s metrics (served by `--metrics-listen`).
public enum LambdaMetricName {
    /// Counter: invocations the agent stopped waiting for (the task was cancelled or timed out) while
    /// the emulator still ran them, by `action`: `waited` (the next invocation waited for the abandoned
    /// one to return) or `restarted` (the agent killed and restarted its `--lambda-emulator` child).
    public static let abandonedInvocations = "htc_lambda_abandoned_invocations_total"
    /// Counter: seconds the emulator stayed busy with abandoned invocations, during which no
    /// invocation was sent.
    public static let abandonedWait = "htc_lambda_abandoned_wait_seconds_total"
    /// Gauge: 1 while an abandoned invocation keeps the emulator busy, else 0.
    public static let abandonedBusy = "htc_lambda_abandoned_busy"
    /// Counter: restarts of the `--lambda-emulator` child, by `reason`: `abandoned` (the agent killed
    /// it) or `exited` (it exited on its own, or never accepted connections).
    public static let emulatorRestarts = "htc_lambda_emulator_restarts_total"
}

/// Lets one invocation at a time reach a Lambda Runtime Interface Emulator, whatever the agent's
/// concurrency: the emulator runs one invocation at a time, and `aws-lambda-rie` panics
/// (`ReserveFailed: AlreadyReserved`) and exits when a second one arrives while one runs.
///
/// Invocations wait in arrival order. An invocation the agent stopped waiting for (its task was
/// cancelled or timed out) still runs inside the emulator, so it keeps the gate — ``abandon(_:reason:limit:logger:)``
/// — until its response comes back and ``release()`` is called. Thread-safe.
final class LambdaInvocationGate: Sendable {
    /// What holds the gate.
    enum Holder: Equatable, Sendable {
        /// An invocation a task is waiting for.
        case running(TaskID)
        /// An invocation no task waits for any more, since `since`.
        case abandoned(TaskID, since: ContinuousClock.Instant)
    }

    private struct Waiter {
        var number: UInt64
        var task: TaskID
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var holder: Holder?
        var waiters: [Waiter] = []
        var nextNumber: UInt64 = 0
    }

    private let state = Mutex(State())
    private let waited = FloatingPointCounter(label: LambdaMetricName.abandonedWait)
    private let busy = Gauge(label: LambdaMetricName.abandonedBusy)

    init() {}

    /// What holds the gate now, if anything.
    var holder: Holder? { state.withLock { $0.holder } }

    /// Invocations waiting for the gate.
    var waiting: Int { state.withLock { $0.waiters.count } }

    /// Waits until the gate is free and takes it for `task`'s invocation. A task cancelled while it
    /// waits leaves the line.
    ///
    /// - Throws: `CancellationError`.
    func acquire(_ task: TaskID, logger: Logger) async throws {
        let number = state.withLock { state in
            defer { state.nextNumber += 1 }
            return state.nextNumber
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                enum Outcome { case took, cancelled, queued(behind: TaskID?) }
                let outcome: Outcome = state.withLock { state in
                    if Task.isCancelled { return .cancelled }
                    if state.holder == nil && state.waiters.isEmpty {
                        state.holder = .running(task)
                        return .took
                    }
                    state.waiters.append(Waiter(number: number, task: task, continuation: continuation))
                    if case .abandoned(let abandoned, _)? = state.holder { return .queued(behind: abandoned) }
                    return .queued(behind: nil)
                }
                switch outcome {
                case .took: continuation.resume()
                case .cancelled: continuation.resume(throwing: CancellationError())
                case .queued(let abandoned?):
                    logger.info("waiting for the abandoned invocation of task \(abandoned) to return before the next one")
                case .queued(nil): break
                }
            }
        } onCancel: {
            let waiter: Waiter? = state.withLock { state in
                guard let index = state.waiters.firstIndex(where: { $0.number == number }) else { return nil }
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Marks the invocation holding the gate as abandoned: its task no longer waits for it, but the
    /// emulator still runs it, so the gate stays taken until ``release()``.
    func abandon(_ task: TaskID, reason: String, limit: Duration, logger: Logger) {
        let waiting = state.withLock { state in
            state.holder = .abandoned(task, since: .now)
            return state.waiters.count
        }
        busy.record(1)
        logger.warning(
            "the invocation of task \(task) \(reason); waiting for the abandoned invocation of task \(task) to return before the next one (at most \(limit))",
            metadata: ["waiting": "\(waiting)"])
    }

    /// Frees the gate, handing it to the first waiting invocation.
    func release() {
        let (waiter, abandonedSince): (Waiter?, ContinuousClock.Instant?) = state.withLock { state in
            var since: ContinuousClock.Instant?
            if case .abandoned(_, let start)? = state.holder { since = start }
            state.holder = nil
            guard !state.waiters.isEmpty else { return (nil, since) }
            let next = state.waiters.removeFirst()
            state.holder = .running(next.task)
            return (next, since)
        }
        if let abandonedSince {
            busy.record(0)
            waited.increment(by: (ContinuousClock.now - abandonedSince).timeInterval)
        }
        waiter?.continuation.resume()
    }
}
