// Package reqlog writes one structured log line per HTTP request: the
// procedure, RPC protocol, Connect code, HTTP status and duration. The
// Connect interceptor records what the RPC layer knows; layers that answer
// before any handler runs (authentication, unknown routes) record their
// outcome with SetCode.
//
// Requests that cost their client nothing are not logged one by one:
// those it abandons before any answer (on HTTP/2, streams reset right
// after their HEADERS, as in a rapid-reset flood) and those refused before
// any handler runs (no token, too many at once). The first on each
// connection is logged, and at most AbusePerSecond such lines a second in
// all. Connections get their record through ConnContext, which the HTTP
// server must use.
package reqlog

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
)

// requestRecord collects what the RPC layer knows about a request so that
// the HTTP layer can write exactly one log line for it, including requests
// that never reach a handler (unknown paths, bad content types, auth).
type requestRecord struct {
	mu        sync.Mutex
	procedure string
	protocol  string
	code      string
	// refused is set by SetRefused: the request was refused before any
	// handler ran, such as by authentication.
	refused bool
	// span is the RPC's span (invalid when it is not traced), so that
	// the request's line carries its trace id like the lines logged
	// while it ran.
	span trace.SpanContext
}

type recordKey struct{}

func (r *requestRecord) set(ctx context.Context, procedure, protocol string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.span = trace.SpanContextFromContext(ctx)
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

// AbusePerSecond caps the log lines written, across all connections, for
// requests their clients abandoned before any answer or that were refused
// before any handler ran; it is also the burst allowed.
const AbusePerSecond = 10

// connRecord is what the log keeps about one connection.
type connRecord struct {
	// abuseLogged is set once a request abandoned or refused before a
	// handler has been logged; later ones on the connection are not.
	abuseLogged atomic.Bool
}

type connKey struct{}

// ConnContext gives each connection the record that bounds its log lines;
// it is meant for http.Server.ConnContext. HTTP/2 requests (over TLS or
// h2c) inherit their connection's context, so all the streams of one
// connection share the record.
func ConnContext(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, &connRecord{})
}

// abuseLog decides which of the requests that cost the client nothing
// (abandoned, or refused before a handler) get a log line: the first of
// each connection, within the global rate.
type abuseLog struct {
	all *rate.Limiter
}

// Allow reports whether the request of ctx may be logged, and if so
// counts it against its connection.
func (l *abuseLog) Allow(ctx context.Context) bool {
	conn, _ := ctx.Value(connKey{}).(*connRecord)
	if conn == nil {
		conn = &connRecord{} // served without ConnContext: no connection to share
	}
	if conn.abuseLogged.Load() || !l.all.Allow() {
		return false
	}
	return conn.abuseLogged.CompareAndSwap(false, true)
}

// Middleware logs one structured line per request after it completes:
// method, path, procedure, protocol, Connect code, HTTP status, duration.
// Requests abandoned by their client before any answer, or refused before
// any handler, are the exception (see the package comment): Go's HTTP/2
// server already skips the handlers of streams reset before they start,
// and closes connections whose queue of such streams grows too long, but
// the handlers that did start still end here, tens of thousands a second
// on one connection, and those answered before the reset arrived look
// like refusals.
func Middleware(log *slog.Logger, next http.Handler) http.Handler {
	abusive := &abuseLog{all: rate.NewLimiter(AbusePerSecond, AbusePerSecond)}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &requestRecord{}
		sw := &statusWriter{ResponseWriter: w, client: r.Context()}
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), recordKey{}, rec)))
		rec.mu.Lock()
		procedure, protocol, code, refused, span := rec.procedure, rec.protocol, rec.code, rec.refused, rec.span
		rec.mu.Unlock()
		abandoned := r.Context().Err() != nil && !sw.answered
		if abandoned && code == "" {
			code = connect.CodeCanceled.String()
		}
		var note []slog.Attr
		if abandoned || refused {
			if !abusive.Allow(r.Context()) {
				return
			}
			note = append(note, slog.String("note", "later requests on this connection that are abandoned or refused before a handler are not logged"))
		}
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
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
		logCtx := r.Context()
		if span.IsValid() {
			logCtx = trace.ContextWithSpanContext(logCtx, span)
		}
		log.LogAttrs(logCtx, level, "request", append([]slog.Attr{
			slog.String("procedure", procedure),
			slog.String("protocol", protocol),
			slog.String("code", code),
			slog.Int("status", status),
			slog.Duration("duration", time.Since(start)),
			slog.String("remote", r.RemoteAddr),
		}, note...)...)
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
	setOutcome(ctx, procedure, code, nil)
}

// SetSpan records the span of a request that is not an RPC (the
// interceptor records those), so that its log line carries its trace id.
func SetSpan(ctx context.Context) {
	if rec, ok := ctx.Value(recordKey{}).(*requestRecord); ok {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		rec.span = trace.SpanContextFromContext(ctx)
	}
}

// SetRefused is SetCode for a request refused before any handler runs
// because of who sent it (no valid token, too many at once). Such
// refusals cost their sender nothing, so like abandoned requests they are
// logged once per connection (see the package comment); an internal
// error is always logged.
func SetRefused(ctx context.Context, procedure string, code connect.Code) {
	refused := code != connect.CodeInternal && code != connect.CodeUnknown
	setOutcome(ctx, procedure, code, &refused)
}

// setOutcome records a request's procedure and code, and whether it was
// refused when refused is not nil.
func setOutcome(ctx context.Context, procedure string, code connect.Code, refused *bool) {
	if rec, ok := ctx.Value(recordKey{}).(*requestRecord); ok {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		rec.procedure = procedure
		rec.code = code.String()
		if refused != nil {
			rec.refused = *refused
		}
	}
}

// statusWriter remembers the HTTP status, and whether the answer began
// while the client was still there. It forwards Flush, which streaming
// responses need, and exposes the wrapped writer to
// http.ResponseController.
type statusWriter struct {
	http.ResponseWriter
	client   context.Context
	status   int
	answered bool
}

func (w *statusWriter) begin() {
	if !w.answered && w.client.Err() == nil {
		w.answered = true
	}
}

func (w *statusWriter) WriteHeader(code int) {
	w.begin()
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.begin()
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	w.begin()
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
			rec.set(ctx, req.Spec().Procedure, req.Peer().Protocol, err)
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
			rec.set(ctx, conn.Spec().Procedure, conn.Peer().Protocol, err)
		}
		return err
	}
}
