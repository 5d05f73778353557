package auth

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/parley-chat/parley/server/reqlog"
	"github.com/parley-chat/parley/server/rpcerr"
)

// Identity is the authenticated caller of a request.
type Identity struct {
	UserID    int
	SessionID string
	// Expires is when the access token the request carried expires (zero
	// when unknown). What outlives the request that opened it, a live
	// stream, must end then: the token no longer vouches for the caller.
	Expires time.Time
}

type identityKey struct{}

// FromContext returns the caller that the middleware authenticated. ok is
// false in public procedures, which run without one.
func FromContext(ctx context.Context) (id Identity, ok bool) {
	id, ok = ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// NewContext returns ctx carrying id, for tests of handlers that run behind
// the middleware.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// Caller returns the authenticated caller, or UNAUTHENTICATED. Handlers of
// non-public procedures always have one; the error guards against a
// procedure wrongly listed as public.
func Caller(ctx context.Context) (Identity, error) {
	id, ok := FromContext(ctx)
	if !ok {
		return Identity{}, connect.NewError(connect.CodeUnauthenticated, errors.New("sign in first"))
	}
	return id, nil
}

// Public says which requests need no caller: RPC procedures by their full
// path, and plain HTTP endpoints by path prefix. Requests under an
// Optional prefix are authenticated when they carry a bearer token (and
// refused when it is bad), and otherwise passed on without a caller, for
// endpoints that accept another proof, such as a signed URL.
type Public struct {
	Procedures map[string]bool
	Prefixes   []string
	Optional   []string
}

func (p Public) optional(r *http.Request) bool {
	if r.Header.Get("Authorization") != "" {
		return false
	}
	for _, prefix := range p.Optional {
		if strings.HasPrefix(r.URL.Path, prefix) {
			return true
		}
	}
	return false
}

func (p Public) allows(path string) bool {
	if p.Procedures[path] {
		return true
	}
	for _, prefix := range p.Prefixes {
		if strings.HasPrefix(path, prefix) {
			return true
		}
	}
	return false
}

// Middleware authenticates every request that public does not allow,
// before any handler decodes it: a bearer access token whose session is
// still open in Redis. Refusals are written in the request's own protocol
// (Connect, gRPC or gRPC-Web) as UNAUTHENTICATED.
//
// Requests that public allows without a caller are the ones anybody can
// make, so they are bounded per client address (see
// Config.UnauthenticatedPerAddress): the excess is refused at once with
// RESOURCE_EXHAUSTED rather than held. Requests under an Optional prefix
// without a token (signed media downloads) are not counted: they carry
// their own proof and their own rate rules.
func (s *Service) Middleware(public Public, next http.Handler) http.Handler {
	errw := connect.NewErrorWriter()
	refuse := func(w http.ResponseWriter, r *http.Request, cerr *connect.Error, status int) {
		reqlog.SetRefused(r.Context(), r.URL.Path, cerr.Code())
		if cerr.Code() == connect.CodeUnauthenticated {
			w.Header().Set("WWW-Authenticate", `Bearer realm="parley"`)
		}
		if errw.IsSupported(r) {
			_ = errw.Write(w, r, cerr)
			if grpcOverHTTP2(r) {
				// The status goes in HTTP/2 trailers, after headers
				// that carry no body. Sent only when the handler
				// returns, such headers get "content-length: 0"
				// from net/http, and nginx's grpc_pass then ends
				// the response there, dropping the trailers: the
				// client sees UNKNOWN ("no Grpc-Status trailer").
				// Flushed now, they go without it.
				_ = http.NewResponseController(w).Flush()
			}
			return
		}
		for k, v := range cerr.Meta() {
			w.Header()[k] = v
		}
		http.Error(w, cerr.Message(), status)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions || public.optional(r) {
			next.ServeHTTP(w, r)
			return
		}
		if public.allows(r.URL.Path) {
			addr := clientNet(s.clientAddr(r.RemoteAddr, r.Header))
			if !s.unauth.acquire(addr) {
				refuse(w, r, rpcerr.TooMany("unauthenticated_address", "too many requests without signing in from your address at once", time.Second), http.StatusTooManyRequests)
				return
			}
			defer s.unauth.release(addr)
			next.ServeHTTP(w, r)
			return
		}
		id, err := s.authenticate(r)
		if err != nil {
			var cerr *connect.Error
			if !errors.As(err, &cerr) {
				cerr = connect.NewError(connect.CodeUnauthenticated, err)
			}
			refuse(w, r, cerr, rpcerr.HTTPStatus(cerr.Code()))
			return
		}
		next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), id)))
	})
}

// grpcOverHTTP2 tells a gRPC request (not gRPC-Web, whose status goes in
// the body or the headers).
func grpcOverHTTP2(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return r.ProtoMajor == 2 && (ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+") || strings.HasPrefix(ct, "application/grpc;"))
}

func (s *Service) authenticate(r *http.Request) (Identity, error) {
	token, ok := bearer(r.Header.Get("Authorization"))
	if !ok {
		return Identity{}, errors.New("missing bearer access token")
	}
	v, err := s.tokens.verifyAccess(token)
	if err != nil {
		s.log.DebugContext(r.Context(), "access token refused", "err", err)
		return Identity{}, errBadToken
	}
	switch err := s.sessions.check(r.Context(), v.userID, v.sessionID); {
	case errors.Is(err, errNoSession):
		return Identity{}, errNoSession
	case err != nil:
		return Identity{}, rpcerr.From(r.Context(), s.log, "check session", err)
	}
	return Identity{UserID: v.userID, SessionID: v.sessionID, Expires: v.expires}, nil
}

func bearer(h string) (string, bool) {
	const prefix = "Bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", false
	}
	return strings.TrimSpace(h[len(prefix):]), true
}
