// Package reqlog writes one structured log line per HTTP request: the
// procedure, RPC protocol, Connect code, HTTP status and duration. The
// Connect interceptor records what the RPC layer knows; layers that answer
// before any handler runs (authentication, unknown routes) record their
// outcome with SetCode.
package reqlog

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
)

// requestRecord collects what the RPC layer knows about a request so that
// the HTTP layer can write exactly one log line for it, including requests
// that never reach a handler (unknown paths, bad content types, auth).
type requestRecord struct {
	mu        sync.Mutex
	procedure string
	protocol  string
	code      string
}

type recordKey struct{}

func (r *requestRecord) set(procedure, protocol string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.procedure = procedure
	r.protocol = protocol
	r.code = codeString(err)
}

func codeString(err error) string {
	if err == nil {
		return "ok"
	}
	if errors.Is(err, context.Canceled) {
		return connect.CodeCanceled.String()
	}
	return connect.CodeOf(err).String()
}

// Middleware logs one structured line per request after it completes:
// method, path, procedure, protocol, Connect code, HTTP status, duration.
func Middleware(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &requestRecord{}
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), recordKey{}, rec)))
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		rec.mu.Lock()
		procedure, protocol, code := rec.procedure, rec.protocol, rec.code
		rec.mu.Unlock()
		if procedure == "" {
			procedure = r.URL.Path
		}
		if protocol == "" {
			protocol = protocolOf(r)
		}
		if code == "" {
			code = httpCode(status)
		}
		level := slog.LevelInfo
		if code == connect.CodeInternal.String() || code == connect.CodeUnknown.String() || status >= 500 {
			level = slog.LevelError
		}
		log.LogAttrs(r.Context(), level, "request",
			slog.String("procedure", procedure),
			slog.String("protocol", protocol),
			slog.String("code", code),
			slog.Int("status", status),
			slog.Duration("duration", time.Since(start)),
			slog.String("remote", r.RemoteAddr),
		)
	})
}

// protocolOf guesses the RPC protocol of a request that no handler claimed.
func protocolOf(r *http.Request) string {
	ct := r.Header.Get("Content-Type")
	switch {
	case strings.HasPrefix(ct, "application/grpc-web"):
		return connect.ProtocolGRPCWeb
	case strings.HasPrefix(ct, "application/grpc"):
		return connect.ProtocolGRPC
	case strings.HasPrefix(ct, "application/connect+"), strings.HasPrefix(ct, "application/json"),
		strings.HasPrefix(ct, "application/proto"):
		return connect.ProtocolConnect
	default:
		return "http"
	}
}

// httpCode names the outcome of a request that no RPC handler finished.
func httpCode(status int) string {
	switch {
	case status < 400:
		return "ok"
	case status == http.StatusNotFound:
		return connect.CodeNotFound.String()
	case status == http.StatusUnsupportedMediaType, status == http.StatusBadRequest:
		return connect.CodeInvalidArgument.String()
	case status == http.StatusUnauthorized:
		return connect.CodeUnauthenticated.String()
	case status == http.StatusForbidden:
		return connect.CodePermissionDenied.String()
	case status == http.StatusRequestEntityTooLarge:
		return connect.CodeResourceExhausted.String()
	default:
		return http.StatusText(status)
	}
}

// SetCode records the outcome of a request that ends before an RPC handler
// runs, such as one refused by authentication.
func SetCode(ctx context.Context, procedure string, code connect.Code) {
	if rec, ok := ctx.Value(recordKey{}).(*requestRecord); ok {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		rec.procedure = procedure
		rec.code = code.String()
	}
}

// statusWriter remembers the HTTP status. It forwards Flush, which streaming
// responses need, and exposes the wrapped writer to http.ResponseController.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter {
	return w.ResponseWriter
}

// Interceptor fills the request's log record with the RPC's
// procedure, protocol and outcome.
type Interceptor struct{}

func (Interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		if rec, ok := ctx.Value(recordKey{}).(*requestRecord); ok {
			rec.set(req.Spec().Procedure, req.Peer().Protocol, err)
		}
		return res, err
	}
}

func (Interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (Interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		err := next(ctx, conn)
		if rec, ok := ctx.Value(recordKey{}).(*requestRecord); ok {
			rec.set(conn.Spec().Procedure, conn.Peer().Protocol, err)
		}
		return err
	}
}
