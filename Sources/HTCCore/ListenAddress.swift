import GridKernel

/// A `HOST:PORT` listening address.
public struct ListenAddress: CustomStringConvertible, Equatable, Sendable {
    /// The host name or address (IPv6 without brackets).
    public var host: String
    /// The port; 0 picks a free one.
    public var port: Int

    /// Parses `HOST:PORT` or `[IPV6]:PORT`; `flag` names the option in errors.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` if the text is not of that form.
    public init(_ text: String, flag: String = "--listen") throws {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65_535).contains(port) else {
            throw GridError.invalidArgument("\(flag) \(text) is not HOST:PORT (e.g. 127.0.0.1:8080)")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw GridError.invalidArgument("\(flag) \(text) has no host (e.g. 127.0.0.1:8080)") }
        self.host = host
        self.port = port
    }

    /// Whether only this machine can connect.
    public var isLoopback: Bool {
        if host == "localhost" || host == "::1" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
