import Foundation
import GridKernel
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs a command once per task: the input on its stdin, its stdout as the output.
///
/// The command line is run by `/bin/sh -c`, so pipes and quoting work as in a shell. A non-zero exit
/// fails the task, keeping the tail of stderr as the error.
///
/// **The command never outlives its task.** It runs in a process group of its own, and whatever is left
/// of that group when the task ends is killed:
/// - when the task is cancelled (cancel, lost lease, time limit, agent stop) the group gets SIGTERM and,
///   after ``killGrace``, SIGKILL — even when the shell that started it already exited and only a
///   grandchild (one that ignores SIGTERM, say) is left;
/// - when the command exits, processes it left running in its group get SIGKILL;
/// - when the agent itself dies (SIGKILL, a crash), a watcher in each group sees the agent's end of a
///   pipe close and kills the group.
///
/// A process that leaves its group on purpose (`setsid`, `setpgid`) escapes all three.
///
/// The output is bounded: past ``maxOutputBytes`` of stdout the command is killed and the task fails
/// with a message saying so. Only the last ``stderrTail`` bytes of stderr are kept. The agent never
/// waits for pipes once the command's group is gone: a process that escaped it and still holds them does
/// not hold the task.
///
/// Blocking calls (`waitid`, `poll`) run on threads of their own — two per running command — never on
/// the cooperative pool and not on Dispatch's pool either: Dispatch caps its threads, and with many
/// children the waiting could take every thread.
public struct ExecHandler: TaskHandler {
    /// The shell command line.
    public let command: String
    /// How long a cancelled child gets between SIGTERM and SIGKILL. Default 2 s.
    public let killGrace: Duration
    /// How much of stderr to keep as the error text of a failure. Default 4 KiB.
    public let stderrTail: Int
    /// The most stdout a command may write; past it the task fails. Default 64 MiB, the largest
    /// payload the default stores take.
    public let maxOutputBytes: Int

    /// The default of ``maxOutputBytes``: 64 MiB.
    public static let defaultMaxOutputBytes = 64 << 20

    /// Creates a handler for a command line.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for an empty command or a limit below 1.
    public init(
        command: String, killGrace: Duration = .seconds(2), stderrTail: Int = 4096, maxOutputBytes: Int = ExecHandler.defaultMaxOutputBytes
    ) throws {
        guard !command.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw GridError.invalidArgument("--exec needs a command, e.g. --exec \"python3 worker.py\"")
        }
        guard maxOutputBytes >= 1 else { throw GridError.invalidArgument("--max-output must be at least 1 byte") }
        // A child that exits without reading its stdin must not kill the agent with SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        self.command = command
        self.killGrace = killGrace
        self.stderrTail = max(0, stderrTail)
        self.maxOutputBytes = maxOutputBytes
    }

    /// The shell that leads the command's process group. It starts the watcher — a subshell that blocks
    /// reading the agent's lifeline on fd 3 and kills the whole group (itself included) when the read
    /// ends, that is when the agent is gone — then closes fd 3 and becomes the command's shell (same pid,
    /// so still the group's leader).
    static let leader = "{ read -r _ <&3; kill -9 0; } </dev/null >/dev/null 2>&1 & exec 3<&-; exec /bin/sh -c \"$1\""

    public func run(input: [UInt8], context: TaskContext) async throws -> [UInt8] {
        let child = try ChildProcess.spawn(["/bin/sh", "-c", Self.leader, "htc-exec", command], environment: [
            "HTC_TASK_ID": context.id.rawValue,
            "HTC_SESSION_ID": context.id.session.rawValue,
            "HTC_ATTEMPT": String(context.attempt),
        ])
        async let streams = child.exchange(input: input, maxOutput: maxOutputBytes, stderrTail: stderrTail)
        let status = await withTaskCancellationHandler {
            await child.waitForExit()
        } onCancel: {
            child.terminate(grace: killGrace)
        }
        child.stopExchange()
        let (stdout, stderr, overflowed) = await streams
        try Task.checkCancellation()
        if overflowed {
            throw ExecFailure(
                message: "command wrote more than \(ByteCount(maxOutputBytes)) to stdout, the limit of a task's output (--max-output, HTC_MAX_OUTPUT); it was stopped")
        }
        guard status == 0 else {
            let tail = String(decoding: stderr, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            let reason = status > 0 ? "exited with status \(status)" : "was killed by signal \(-status)"
            throw ExecFailure(message: "command \(reason)" + (tail.isEmpty ? "" : ": \(tail)"))
        }
        return stdout
    }
}

/// The failure of a command run by ``ExecHandler``: its exit status and the tail of its stderr.
public struct ExecFailure: Error, CustomStringConvertible, Sendable {
    /// The error text kept with the task.
    public let message: String
    public var description: String { message }
}

/// A child process with pipes to its stdin, stdout and stderr, leading a process group of its own.
///
/// The leader is not reaped until its group has been sent SIGKILL: while it is an unreaped zombie its
/// pid, and so the group id, cannot be reused, so a signal sent to the group never reaches a stranger.
final class ChildProcess: Sendable {
    let pid: pid_t
    /// The child's stdin, stdout and stderr; ``exchange(input:maxOutput:stderrTail:)`` serves and closes
    /// them, or the owner does.
    let stdin: Int32
    let stdout: Int32
    let stderr: Int32
    /// The write end of a pipe whose other end tells ``exchange(input:maxOutput:stderrTail:)`` to drain
    /// what is left and stop.
    private let stopWriter: Int32
    private let stopReader: Int32
    /// Whether ``exchange(input:maxOutput:stderrTail:)`` took the stop pipe (else `deinit` closes it).
    private let exchanged = Atomic<Bool>(false)
    /// The leader's exit status once it is reaped; signals to the group are sent only before, under
    /// this lock.
    private let status = Mutex<Int32?>(nil)
    private static let timers = DispatchQueue(label: "htc.exec.kill-timer")

    /// The read end of the agent's lifeline: every child gets it as fd 3. Its write end is held by this
    /// process alone (close-on-exec), so it closes exactly when this process dies.
    private static let lifeline: Int32 = {
        keepInheritedDescriptorsFromChildren()
        var fds: [Int32] = [0, 0]
        guard makePipe(&fds) else { return -1 }
        return fds[0]
    }()

    /// Marks close-on-exec every descriptor above 2 that this process inherited open (the grid's own are
    /// close-on-exec already). A command holding one would keep it open after the agent died — a
    /// parent's socket that tells it the agent exited, say.
    private static func keepInheritedDescriptorsFromChildren() {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
        for fd in entries.compactMap(Int32.init) where fd > 2 {
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 && flags & FD_CLOEXEC == 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
    }

    /// Runs a blocking call on a thread of its own.
    private static func blocking(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        thread.stackSize = 256 * 1024
        thread.start()
    }

    private init(pid: pid_t, stdin: Int32, stdout: Int32, stderr: Int32, stop: [Int32]) {
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.stopReader = stop[0]
        self.stopWriter = stop[1]
    }

    /// Serialises pipe creation and spawning, so that no child is spawned between the creation of
    /// another child's pipes and the moment they are marked close-on-exec.
    private static let spawnLock = Mutex(())

    static func spawn(_ arguments: [String], environment extra: [String: String]) throws -> ChildProcess {
        try spawnLock.withLock { _ in try spawnLocked(arguments, environment: extra) }
    }

    /// Creates a pipe whose two ends are close-on-exec (Glibc's `pipe2` is not visible to Swift).
    private static func makePipe(_ fds: inout [Int32]) -> Bool {
        guard pipe(&fds) == 0 else { return false }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return true
    }

    private static func spawnLocked(_ arguments: [String], environment extra: [String: String]) throws -> ChildProcess {
        var input: [Int32] = [0, 0]
        var output: [Int32] = [0, 0]
        var errors: [Int32] = [0, 0]
        var stop: [Int32] = [0, 0]
        // Close-on-exec, so that a child spawned concurrently for another task does not inherit (and
        // hold open) this child's pipes; dup2 onto 0, 1, 2 and 3 clears the flag for this child only.
        guard lifeline >= 0, makePipe(&input), makePipe(&output), makePipe(&errors), makePipe(&stop) else {
            throw GridError(.unavailable, "cannot create pipes for the task's process: \(String(cString: strerror(errno)))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, input[0], 0)
        posix_spawn_file_actions_adddup2(&actions, output[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errors[1], 2)
        posix_spawn_file_actions_adddup2(&actions, lifeline, 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)

        var environment = ProcessInfo.processInfo.environment
        for (key, value) in extra { environment[key] = value }
        let envStrings = environment.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let result = withCStrings(arguments) { argv in
            withCStrings(envStrings) { envp in
                posix_spawn(&pid, arguments[0], &actions, &attributes, argv, envp)
            }
        }
        close(input[0])
        close(output[1])
        close(errors[1])
        guard result == 0 else {
            for fd in [input[1], output[0], errors[0], stop[0], stop[1]] { close(fd) }
            throw GridError(.unavailable, "cannot start '\(arguments.joined(separator: " "))': \(String(cString: strerror(result)))")
        }
        return ChildProcess(pid: pid, stdin: input[1], stdout: output[0], stderr: errors[0], stop: stop)
    }

    /// Writes `input` to the child's stdin and reads its stdout and stderr, on one thread, until both
    /// reach their end or ``stopExchange()`` says the group is gone (then it takes what the pipes still
    /// hold and stops, whoever else may hold them). Past `maxOutput` bytes of stdout it kills the group.
    ///
    /// - Returns: stdout (at most `maxOutput` bytes), the last `stderrTail` bytes of stderr, and whether
    ///   stdout went past `maxOutput`.
    func exchange(input: [UInt8], maxOutput: Int, stderrTail: Int) async -> (stdout: [UInt8], stderr: [UInt8], overflowed: Bool) {
        exchanged.store(true, ordering: .relaxed)
        // Non-blocking here only: an owner that reads the pipes itself (the Lambda emulator's) blocks.
        for fd in [stdin, stdout, stderr, stopReader] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        return await withCheckedContinuation { continuation in
            Self.blocking {
                var exchange = PipeExchange(input: input, maxOutput: maxOutput, stderrTail: stderrTail)
                exchange.run(stdin: self.stdin, stdout: self.stdout, stderr: self.stderr, stop: self.stopReader) {
                    self.signal(SIGKILL)
                }
                for fd in [self.stdout, self.stderr, self.stopReader] { close(fd) }
                continuation.resume(returning: (exchange.output, exchange.errorTail, exchange.overflowed))
            }
        }
    }

    /// Waits until the leader has exited, then kills what is left of its group and reaps the leader:
    /// its exit status, or minus the signal that killed it.
    func waitForExit() async -> Int32 {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Self.blocking {
                // WNOWAIT: the leader stays a zombie, holding its group id, until the group is killed.
                var info = siginfo_t()
                while waitid(P_PID, id_t(self.pid), &info, WEXITED | WNOWAIT) < 0 && errno == EINTR {}
                continuation.resume()
            }
        }
        return status.withLock { status -> Int32 in
            if let status { return status }
            kill(-pid, SIGKILL)
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
            let signal = raw & 0x7f
            let code = signal == 0 ? (raw >> 8) & 0xff : -signal
            status = code
            return code
        }
    }

    deinit {
        if !exchanged.load(ordering: .relaxed) {
            close(stopReader)
            close(stopWriter)
        }
    }

    /// Once the group is gone: tells the pipe exchange to take what the pipes still hold and stop.
    func stopExchange() {
        var byte: UInt8 = 1
        _ = write(stopWriter, &byte, 1)
        close(stopWriter)
    }

    /// Sends `signal` to the whole group, unless the leader was reaped (the id may be reused then).
    private func signal(_ signal: Int32) {
        status.withLock { status in
            if status == nil { kill(-pid, signal) }
        }
    }

    /// Sends SIGTERM to the child's process group, and SIGKILL after `grace` if the leader still runs.
    func terminate(grace: Duration) {
        signal(SIGTERM)
        Self.timers.asyncAfter(deadline: .now() + grace.timeInterval) { self.signal(SIGKILL) }
    }
}

/// The loop that feeds a child's stdin and collects its stdout and stderr through `poll`, within bounds.
private struct PipeExchange {
    let input: [UInt8]
    let maxOutput: Int
    let stderrTail: Int
    private(set) var output: [UInt8] = []
    private(set) var errors: [UInt8] = []
    private(set) var overflowed = false
    private var written = 0
    private var chunk = [UInt8](repeating: 0, count: 64 * 1024)

    init(input: [UInt8], maxOutput: Int, stderrTail: Int) {
        self.input = input
        self.maxOutput = maxOutput
        self.stderrTail = stderrTail
    }

    /// Runs until stdout and stderr end, or `stop` becomes readable (then drains both without waiting).
    /// Closes stdin when it is all written or the child stopped reading; sets its descriptor to -1 then.
    mutating func run(stdin: Int32, stdout: Int32, stderr: Int32, stop: Int32, kill: () -> Void) {
        var stdin = stdin
        var outputs: [Int32] = [stdout, stderr]
        if input.isEmpty { close(stdin); stdin = -1 }
        while !outputs.isEmpty {
            var fds = [pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
            fds += outputs.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            if stdin >= 0 { fds.append(pollfd(fd: stdin, events: Int16(POLLOUT), revents: 0)) }
            let ready = poll(&fds, nfds_t(fds.count), -1)
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            for entry in fds.dropFirst() where entry.revents != 0 {
                if entry.fd == stdin {
                    if !writeSome(stdin) { close(stdin); stdin = -1 }
                } else if !readSome(entry.fd, isStdout: entry.fd == stdout, kill: kill) {
                    outputs.removeAll { $0 == entry.fd }
                }
            }
            if fds[0].revents != 0 {
                // The group is gone: take what is buffered, but wait for nobody.
                for fd in outputs { while readSome(fd, isStdout: fd == stdout, kill: kill, draining: true) {} }
                break
            }
        }
        if stdin >= 0 { close(stdin) }
    }

    /// Writes what the pipe takes now; `false` once all is written or the child closed its end.
    private mutating func writeSome(_ fd: Int32) -> Bool {
        while written < input.count {
            let count = input.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
            if count > 0 { written += count; continue }
            if count < 0 && errno == EINTR { continue }
            return count < 0 && errno == EAGAIN
        }
        return false
    }

    /// Reads what the pipe holds now; `false` at its end (or, when `draining`, once it is empty).
    private mutating func readSome(_ fd: Int32, isStdout: Bool, kill: () -> Void, draining: Bool = false) -> Bool {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        if count < 0 {
            if errno == EINTR { return true }
            return errno == EAGAIN && !draining
        }
        if count == 0 { return false }
        if isStdout {
            let room = maxOutput - output.count
            output.append(contentsOf: chunk[0..<min(count, max(room, 0))])
            if count > room && !overflowed {
                overflowed = true
                kill()
            }
        } else if stderrTail > 0 {
            errors.append(contentsOf: chunk[0..<count])
            if errors.count > 2 * stderrTail { errors.removeFirst(errors.count - stderrTail) }
        }
        return true
    }
}

extension PipeExchange {
    /// The kept stderr: its last `stderrTail` bytes.
    var errorTail: [UInt8] { Array(errors.suffix(stderrTail)) }
}

private func withCStrings<Result>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> Result) -> Result {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for pointer in pointers { free(pointer) } }
    return body(pointers)
}
