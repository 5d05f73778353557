package telemetry

import (
	"context"
	"strings"
	"time"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/multitracer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
)

const instrumentation = "github.com/parley-chat/parley/server/telemetry"

// MongoMonitor returns a command monitor that times every MongoDB command
// into the store-call histogram and, when tracing, makes a client span of
// it under the request's span; then it calls next's functions (next may
// be nil).
func (t *Telemetry) MongoMonitor(next *event.CommandMonitor) *event.CommandMonitor {
	tracer := t.storeTracers().Tracer(instrumentation)
	spans := &t.mongoSpans
	end := func(id int64, err string) {
		if s, ok := spans.LoadAndDelete(id); ok {
			span := s.(openSpan).span
			if err != "" {
				span.SetStatus(codes.Error, err)
			}
			span.End()
		}
	}
	if next == nil {
		next = &event.CommandMonitor{}
	}
	return &event.CommandMonitor{
		Started: func(ctx context.Context, e *event.CommandStartedEvent) {
			if t.Tracing() {
				var coll string
				if first, err := e.Command.IndexErr(0); err == nil { // redacted commands have none
					coll, _ = first.Value().StringValueOK()
				}
				name := e.CommandName
				if coll != "" {
					name += " " + coll
				}
				_, span := tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
					semconv.DBSystemNameMongoDB,
					semconv.DBOperationName(e.CommandName),
					semconv.DBNamespace(e.DatabaseName),
					semconv.DBCollectionName(coll),
				))
				if span.IsRecording() {
					spans.Store(e.RequestID, openSpan{span: span, at: time.Now()})
					if t.mongoStarts.Add(1)%1024 == 0 {
						t.sweepMongoSpans(time.Now().Add(-staleSpan))
					}
				}
			}
			if next.Started != nil {
				next.Started(ctx, e)
			}
		},
		Succeeded: func(ctx context.Context, e *event.CommandSucceededEvent) {
			t.storeCalls.WithLabelValues("mongodb", e.CommandName).Observe(e.Duration.Seconds())
			end(e.RequestID, "")
			if next.Succeeded != nil {
				next.Succeeded(ctx, e)
			}
		},
		Failed: func(ctx context.Context, e *event.CommandFailedEvent) {
			t.storeCalls.WithLabelValues("mongodb", e.CommandName).Observe(e.Duration.Seconds())
			end(e.RequestID, e.Failure.Error())
			if next.Failed != nil {
				next.Failed(ctx, e)
			}
		},
	}
}

// openSpan is a MongoDB command's span, waiting for its reply.
type openSpan struct {
	span trace.Span
	at   time.Time
}

// staleSpan is how long a command's span waits for the driver's event
// of its end. The driver publishes none for a command it could not send
// (such as one it failed to compress); such spans end as stale.
const staleSpan = 10 * time.Minute

// sweepMongoSpans ends the spans of commands started before cutoff.
func (t *Telemetry) sweepMongoSpans(cutoff time.Time) {
	t.mongoSpans.Range(func(id, v any) bool {
		if s := v.(openSpan); s.at.Before(cutoff) {
			if _, ok := t.mongoSpans.LoadAndDelete(id); ok {
				s.span.SetStatus(codes.Error, "no reply seen")
				s.span.End()
			}
		}
		return true
	})
}

// SQLTracer returns a pgx tracer that times every query into the
// store-call histogram and, when tracing, makes its span (otelpgx); then
// it calls next (which may be nil).
func (t *Telemetry) SQLTracer(next pgx.QueryTracer) pgx.QueryTracer {
	tracers := []pgx.QueryTracer{sqlTimer{t.storeCalls}}
	if t.Tracing() {
		tracers = append(tracers, otelpgx.NewTracer(
			otelpgx.WithTracerProvider(t.storeTracers()),
			otelpgx.WithTrimSQLInSpanName(),
		))
	}
	if next != nil {
		tracers = append(tracers, next)
	}
	return multitracer.New(tracers...)
}

type sqlTimer struct{ h *prometheus.HistogramVec }

type sqlStart struct {
	at time.Time
	op string
}

type sqlStartKey struct{}

func (s sqlTimer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	op := "other"
	if f := strings.Fields(data.SQL); len(f) > 0 && !strings.HasPrefix(f[0], "-") && !strings.HasPrefix(f[0], "/") {
		op = strings.ToLower(f[0])
	}
	return context.WithValue(ctx, sqlStartKey{}, sqlStart{at: time.Now(), op: op})
}

func (s sqlTimer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	if st, ok := ctx.Value(sqlStartKey{}).(sqlStart); ok {
		s.h.WithLabelValues("postgres", st.op).Observe(time.Since(st.at).Seconds())
	}
}

// InstrumentRedis makes rdb time every command and pipeline into the
// store-call histogram and, when tracing, make their spans (redisotel).
func (t *Telemetry) InstrumentRedis(rdb redis.UniversalClient) error {
	rdb.AddHook(redisTimer{t.storeCalls})
	if t.Tracing() {
		return redisotel.InstrumentTracing(rdb, redisotel.WithTracerProvider(t.storeTracers()), redisotel.WithDBStatement(false))
	}
	return nil
}

type redisTimer struct{ h *prometheus.HistogramVec }

func (redisTimer) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r redisTimer) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmd)
		r.h.WithLabelValues("redis", cmd.Name()).Observe(time.Since(start).Seconds())
		return err
	}
}

func (r redisTimer) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmds)
		r.h.WithLabelValues("redis", "pipeline").Observe(time.Since(start).Seconds())
		return err
	}
}

// storeTracers is the tracer provider of the store calls: it makes spans
// only under a span, so that the calls of background work (health pings,
// the live hub's ticks, clean-ups) do not each start a trace of their own.
func (t *Telemetry) storeTracers() trace.TracerProvider { return childOnly{tp: t.tracers} }

type childOnly struct {
	embedded.TracerProvider
	tp trace.TracerProvider
}

func (c childOnly) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return childTracer{t: c.tp.Tracer(name, opts...)}
}

type childTracer struct {
	embedded.Tracer
	t trace.Tracer
}

func (c childTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		// The context's own span: a no-op one, which records nothing.
		return ctx, trace.SpanFromContext(ctx)
	}
	return c.t.Start(ctx, name, opts...)
}
