import Hummingbird
import Synchronization

/// The request context of `htc-server`: Hummingbird's core context plus the authenticated tenant.
public struct ServerRequestContext: RequestContext {
    /// Hummingbird's per-request storage.
    public var coreContext: CoreRequestContextStorage
    /// The tenant the request was authenticated as; `nil` when authentication is off (`--auth none`),
    /// in which case every session is visible.
    public var tenant: String? {
        didSet { identity.tenant = tenant }
    }
    /// The tenant as seen by the middleware that runs outside authentication (the access log).
    /// Contexts are values: authentication sets `tenant` on the copy it hands inwards, which the outer
    /// middleware never sees, so the copies share this one reference.
    let identity = RequestIdentity()

    /// Creates a context for a new request.
    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.tenant = nil
    }
}

/// Who a request turned out to be, shared by every copy of one request's context.
final class RequestIdentity: Sendable {
    private let value = Mutex<String?>(nil)

    /// The authenticated tenant; `nil` until authentication succeeds (or when it is off).
    var tenant: String? {
        get { value.withLock { $0 } }
        set { value.withLock { $0 = newValue } }
    }
}
