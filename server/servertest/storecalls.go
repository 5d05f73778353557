package servertest

import (
	"context"
	"maps"
	"net/http"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/event"

	"github.com/parley-chat/parley/server/app"
)

// StoreCalls counts the store calls that a server's requests make, per
// procedure (the request's path): MongoDB commands, Redis round trips and
// the commands in them, PostgreSQL queries. Calls made outside a request
// (health pings, heartbeats, janitors) are not counted. The counts are
// deterministic for a given sequence of calls, so tests can hold them to
// committed numbers.
type StoreCalls struct {
	mu    sync.Mutex
	procs map[string]*Calls
	// lockPrefix starts the Redis keys of document locks.
	lockPrefix string
}

// Calls are the store calls of one procedure's requests.
type Calls struct {
	// Requests is the number of requests counted.
	Requests int
	// Mongo counts MongoDB commands by name ("find", "insert", ...).
	Mongo map[string]int
	// RedisRoundTrips counts Redis round trips (a pipeline is one);
	// RedisCommands the commands in them, by name ("evalsha", "hmget").
	RedisRoundTrips int
	RedisCommands   map[string]int
	// RedisLocks counts the Redis commands on document lock keys.
	RedisLocks int
	// SQL counts PostgreSQL queries.
	SQL int
}

// MongoTotal returns the number of MongoDB commands.
func (c Calls) MongoTotal() int { return sum(c.Mongo) }

// RedisTotal returns the number of Redis commands.
func (c Calls) RedisTotal() int { return sum(c.RedisCommands) }

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// WithStoreCalls counts the server's store calls in sc.
func WithStoreCalls(sc *StoreCalls) Option {
	return func(s *settings) {
		sc.lockPrefix = s.cfg.RedisPrefix + "lock:"
		s.cfg.Observe = sc.observer()
	}
}

// Reset forgets every count.
func (sc *StoreCalls) Reset() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.procs = nil
}

// Of returns the counts of the requests to procedure, such as
// "/parley.v1.MessageService/SendMessage".
func (sc *StoreCalls) Of(procedure string) Calls {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	c, ok := sc.procs[procedure]
	if !ok {
		return Calls{}
	}
	out := *c
	out.Mongo, out.RedisCommands = maps.Clone(c.Mongo), maps.Clone(c.RedisCommands)
	return out
}

type procKey struct{}

// count runs f on the counts of the request ctx belongs to, if any.
func (sc *StoreCalls) count(ctx context.Context, f func(*Calls)) {
	proc, ok := ctx.Value(procKey{}).(string)
	if !ok {
		return
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.procs == nil {
		sc.procs = map[string]*Calls{}
	}
	c, ok := sc.procs[proc]
	if !ok {
		c = &Calls{Mongo: map[string]int{}, RedisCommands: map[string]int{}}
		sc.procs[proc] = c
	}
	f(c)
}

func (sc *StoreCalls) observer() *app.Observer {
	return &app.Observer{
		Handler: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ctx := context.WithValue(r.Context(), procKey{}, r.URL.Path)
				sc.count(ctx, func(c *Calls) { c.Requests++ })
				next.ServeHTTP(w, r.WithContext(ctx))
			})
		},
		Mongo: &event.CommandMonitor{
			Started: func(ctx context.Context, e *event.CommandStartedEvent) {
				sc.count(ctx, func(c *Calls) { c.Mongo[e.CommandName]++ })
			},
		},
		Redis: redisCounter{sc},
		SQL:   sqlCounter{sc},
	}
}

// redisCounter is a go-redis hook that counts round trips and commands.
type redisCounter struct{ sc *StoreCalls }

func (h redisCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h redisCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.record(ctx, cmd)
		return next(ctx, cmd)
	}
}

func (h redisCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.record(ctx, cmds...)
		return next(ctx, cmds)
	}
}

// connSetup names the commands go-redis sends on a new connection, under
// the context of the call that needed it: what a dial costs, not a call.
var connSetup = map[string]bool{"hello": true, "client": true, "auth": true, "select": true}

func (h redisCounter) record(ctx context.Context, cmds ...redis.Cmder) {
	if len(cmds) == 0 || connSetup[cmds[0].Name()] {
		return
	}
	h.sc.count(ctx, func(c *Calls) {
		c.RedisRoundTrips++
		for _, cmd := range cmds {
			c.RedisCommands[cmd.Name()]++
			for _, arg := range cmd.Args()[1:] {
				if s, ok := arg.(string); ok && strings.HasPrefix(s, h.sc.lockPrefix) {
					c.RedisLocks++
					break
				}
			}
		}
	})
}

// sqlCounter is a pgx tracer that counts queries.
type sqlCounter struct{ sc *StoreCalls }

func (t sqlCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	t.sc.count(ctx, func(c *Calls) { c.SQL++ })
	return ctx
}

func (sqlCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
