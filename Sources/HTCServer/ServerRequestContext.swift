import Hummingbird

/// The request context of `htc-server`: Hummingbird's core context plus the authenticated tenant.
public struct ServerRequestContext: RequestContext {
    /// Hummingbird's per-request storage.
    public var coreContext: CoreRequestContextStorage
    /// The tenant the request was authenticated as; `nil` when authentication is off (`--auth none`),
    /// in which case every session is visible.
    public var tenant: String?

    /// Creates a context for a new request.
    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.tenant = nil
    }
}
