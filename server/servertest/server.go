package servertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/live"
	"github.com/parley-chat/parley/server/media"
)

// Server is a complete Parley server running in-process on a loopback port.
type Server struct {
	// URL is the server's base URL, such as "http://127.0.0.1:41234".
	URL string
	// App is the assembled server, for access to its stores.
	App *app.App

	cancel context.CancelFunc
	done   chan error
}

// Option adjusts a test server.
type Option func(*settings)

type settings struct {
	cfg        app.Config
	sendBuffer int
	log        slog.Handler
}

// WithConfig lets a test change any part of the server's configuration.
func WithConfig(f func(*app.Config)) Option { return func(s *settings) { f(&s.cfg) } }

// WithLog sends the server's log to h as well, for tests of what it logs.
func WithLog(h slog.Handler) Option { return func(s *settings) { s.log = h } }

// WithSendBuffer gives the server's connections a kernel send buffer of
// about n bytes (SO_SNDBUF), as on a slow network, so that a client that
// stops reading blocks the server's writes after little data rather than
// after the megabytes loopback buffers by default.
func WithSendBuffer(n int) Option { return func(s *settings) { s.sendBuffer = n } }

// WithOwnMongoDatabase gives the server a MongoDB database of its own,
// dropped when the test ends, for tests that write so much that they would
// slow the package's other tests down (FerretDB scans whole collections).
func WithOwnMongoDatabase(tb testing.TB) Option {
	name := "parley_test_" + randomHex()
	stores := SharedStores(tb)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		client, err := mongo.Connect(options.Client().ApplyURI(stores.MongoURI))
		if err != nil {
			tb.Errorf("servertest: drop %s: %v", name, err)
			return
		}
		defer client.Disconnect(ctx)
		if err := client.Database(name).Drop(ctx); err != nil {
			tb.Errorf("servertest: drop %s: %v", name, err)
		}
	})
	return func(s *settings) { s.cfg.MongoDatabase = name }
}

// New starts a server on the package's shared stores (see SharedStores)
// and stops it when tb's test ends. Its log goes to tb.Log when the test
// runs with -v or fails, and to nowhere otherwise.
func New(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	stores := SharedStores(tb)
	cfg := app.Config{
		DataDir:           tb.TempDir(),
		DatabaseURL:       stores.DatabaseURL,
		MongoURI:          stores.MongoURI,
		MongoDatabase:     stores.MongoDatabase,
		RedisURL:          stores.RedisURL,
		RedisPrefix:       stores.RedisPrefix,
		RedisWaitReplicas: -1,
		JWTKeyFile:        stores.JWTKeyFile,
		Migrate:           true,
		HealthInterval:    50 * time.Millisecond,
		ShutdownTimeout:   5 * time.Second,
		Version:           "test",
		// Tests sign up many accounts from one address; the limits
		// themselves are tested with a server of their own.
		RateLimits: auth.RateLimits{
			LoginFailuresPerAccount: 1000, LoginAttemptsPerAddress: 100000, LoginWindow: time.Minute,
			RegistrationsPerAddress: 100000, RegistrationWindow: time.Minute,
		},
		// Tests open streams freely; the stream limits are tested with
		// the defaults set back (see server/live).
		Live: live.Config{MaxStreamsPerSession: 1000, MaxStreamsPerUser: 1000},
		// Likewise the per-user limits: tests and benchmarks send and
		// upload far faster than people; the limits' own tests set
		// tight ones. (The upload rate floor keeps its default: no test
		// trickles by accident.)
		Sends: chat.SendLimit{Rate: 1_000_000, Burst: 1_000_000},
		Media: media.Config{MaxConcurrentUploads: 10_000, MaxUnsentBytes: 1 << 50},
		// Tests sign up hundreds of accounts at once from one address;
		// the bound itself is tested with a server of its own.
		UnauthenticatedPerAddress: 100000,
	}
	set := settings{cfg: cfg}
	for _, o := range opts {
		o(&set)
	}
	log := slog.New(slog.NewTextHandler(newTestWriter(tb), &slog.HandlerOptions{Level: slog.LevelDebug}))
	if _, ok := tb.(*testing.B); ok {
		log = slog.New(slog.DiscardHandler) // a benchmark's log would be printed whole
	}
	if set.log != nil {
		log = slog.New(slog.NewMultiHandler(log.Handler(), set.log))
	}
	return start(tb, set.cfg, log, set.sendBuffer)
}

// Start starts a server with exactly the given configuration and stops it
// when tb's test ends.
func Start(tb testing.TB, cfg app.Config, log *slog.Logger) *Server {
	tb.Helper()
	return start(tb, cfg, log, 0)
}

func start(tb testing.TB, cfg app.Config, log *slog.Logger, sendBuffer int) *Server {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := app.Open(ctx, cfg, log)
	if err != nil {
		tb.Fatalf("servertest: open: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		a.Close()
		tb.Fatalf("servertest: listen: %v", err)
	}
	if sendBuffer > 0 {
		ln = sendBufferListener{ln.(*net.TCPListener), sendBuffer}
	}
	serveCtx, stop := context.WithCancel(context.Background())
	s := &Server{
		URL:    "http://" + ln.Addr().String(),
		App:    a,
		cancel: stop,
		done:   make(chan error, 1),
	}
	go func() {
		err := a.Serve(serveCtx, ln)
		s.done <- errors.Join(err, a.Close())
	}()
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Errorf("servertest: stop: %v", err)
		}
	})
	return s
}

// Stop shuts the server down gracefully and returns Serve's error. It is
// safe to call more than once.
func (s *Server) Stop() error {
	// The test clients' idle connections first: one that a client dialed
	// and then did not need (another became free) has sent nothing, and
	// net/http's graceful shutdown waits up to 5 s for such a connection.
	for _, p := range Protocols {
		p.HTTPClient.CloseIdleConnections()
	}
	s.cancel()
	err, ok := <-s.done
	if ok {
		close(s.done)
	}
	return err
}

// Clock is a clock that tests move by hand, for expiry without sleeping.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock at the current time.
func NewClock() *Clock { return &Clock{now: time.Now()} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Protocol is one of the RPC protocols clients use to reach the server.
type Protocol struct {
	// Name is "connect", "grpc" or "grpcweb".
	Name string
	// Options select the protocol on a generated client.
	Options []connect.ClientOption
	// HTTPClient carries the calls: HTTP/1.1 for Connect and gRPC-Web as
	// browsers use them, cleartext HTTP/2 for gRPC.
	HTTPClient *http.Client
}

// Protocols lists the protocols integration tests run every case over.
var Protocols = []Protocol{
	{Name: "connect", HTTPClient: http1Client},
	{Name: "grpc", Options: []connect.ClientOption{connect.WithGRPC()}, HTTPClient: h2cClient},
	{Name: "grpcweb", Options: []connect.ClientOption{connect.WithGRPCWeb()}, HTTPClient: http1Client},
}

var (
	http1Client = &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 100,
	}}
	h2cClient = func() *http.Client {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		return &http.Client{Transport: &http.Transport{Protocols: &p}}
	}()
)

// Client returns a generated client of the server for the protocol, for
// example:
//
//	c := servertest.Client(srv, p, parleyv1connect.NewServerServiceClient)
func Client[T any](s *Server, p Protocol, newClient func(connect.HTTPClient, string, ...connect.ClientOption) T) T {
	return newClient(p.HTTPClient, s.URL, p.Options...)
}

// testWriter sends log output to tb.Log, line by line, until tb's test
// ends; after that (a request the server's shutdown gave up waiting for,
// still logging) to standard error, since a test's Log may not be called
// once it has ended.
type testWriter struct {
	tb    testing.TB
	mu    sync.Mutex
	ended bool
}

// newTestWriter returns a writer for tb's log. Its cleanup, registered
// first, runs after every later one (the server's stop among them).
func newTestWriter(tb testing.TB) *testWriter {
	w := &testWriter{tb: tb}
	tb.Cleanup(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.ended = true
	})
	return w
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	line := strings.TrimRight(string(p), "\n")
	if w.ended {
		fmt.Fprintf(os.Stderr, "servertest: logged after %s ended: %s\n", w.tb.Name(), line)
		return len(p), nil
	}
	w.tb.Helper()
	w.tb.Log(line)
	return len(p), nil
}

var _ io.Writer = (*testWriter)(nil)

type sendBufferListener struct {
	*net.TCPListener
	size int
}

func (l sendBufferListener) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	if err := c.SetWriteBuffer(l.size); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// SmallReceiveBuffer returns an HTTP/1.1 client whose connections have a
// kernel receive buffer of about n bytes (SO_RCVBUF), so that a test can
// stop reading a stream and have the server's writes block soon.
func SmallReceiveBuffer(n int) *http.Client {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
		})
		return errors.Join(err, serr)
	}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}
