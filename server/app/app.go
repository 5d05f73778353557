// Package app assembles a complete Parley server from its configuration:
// it opens (or starts embedded stand-ins for) PostgreSQL, MongoDB and Redis,
// migrates the schema, builds the handler with server.New and serves it
// until told to stop. The program's run function and the test harness
// (server/servertest) both use it, so tests exercise the same wiring as
// production.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	netmail "net/mail"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"

	"github.com/parley-chat/parley/server"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/doclock"
	"github.com/parley-chat/parley/server/embedded"
	"github.com/parley-chat/parley/server/export"
	"github.com/parley-chat/parley/server/health"
	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/live"
	"github.com/parley-chat/parley/server/mail"
	"github.com/parley-chat/parley/server/media"
	"github.com/parley-chat/parley/server/push"
	"github.com/parley-chat/parley/server/redisconn"
	"github.com/parley-chat/parley/server/rpcerr"
	"github.com/parley-chat/parley/server/sqldb"
	"github.com/parley-chat/parley/server/telemetry"
	"github.com/parley-chat/parley/server/user"
)

// Config is the whole configuration of one server instance. The zero value
// of a URL field means "start the embedded stand-in under DataDir".
type Config struct {
	// DataDir holds the embedded stores' files.
	DataDir string
	// DatabaseURL is a PostgreSQL connection string.
	DatabaseURL string
	// MongoURI is a MongoDB connection string.
	MongoURI string
	// MongoDatabase names the MongoDB database to use.
	MongoDatabase string
	// RedisURL is a redis:// or rediss:// URL.
	RedisURL string
	// RedisWaitReplicas is how many Redis replicas must confirm a
	// session's end or a refresh token's rotation before it is answered
	// (auth.Config.Replicas); below 0: 1 on a Redis Cluster, 0 on a
	// single server. The zero Config waits for none.
	RedisWaitReplicas int
	// RedisPrefix starts every Redis key and channel Parley uses, so that
	// several deployments (or test runs) can share one Redis.
	RedisPrefix string
	// Migrate applies pending PostgreSQL migrations at start-up.
	Migrate bool
	// TLSCertFile and TLSKeyFile, when both set, serve HTTPS (HTTP/2 over
	// TLS) instead of cleartext HTTP/1.1 and h2c.
	TLSCertFile, TLSKeyFile string
	// CORSOrigins lists the browser origins allowed to call the API.
	CORSOrigins []string
	// MaxRequestBytes limits the size of one request message.
	MaxRequestBytes int64
	// HealthInterval is how often the stores are pinged.
	HealthInterval time.Duration
	// DrainDelay is how long a server that was told to stop goes on
	// serving while it reports itself unready (/readyz, gRPC health), so
	// that load balancers stop sending it requests before it closes its
	// listener; zero: it closes at once.
	DrainDelay time.Duration
	// ShutdownTimeout bounds how long in-flight requests, and then the
	// mails they left sending (password reset codes), may take to finish
	// once shutdown begins.
	ShutdownTimeout time.Duration
	// Version is the build version.
	Version string
	// JWTKeyFile holds the Ed25519 key that signs access and refresh
	// tokens, upload tokens and download URLs. Empty means
	// jwt-ed25519.pem in DataDir, created on first start.
	JWTKeyFile string
	// JWTVerifyKeyFiles hold retired signing keys (PEM, PKCS #8 Ed25519
	// private keys, since refresh tokens and media URLs carry MACs derived
	// from them): what they signed still verifies, nothing new is signed
	// with them. A key rotation lists the new key here on every instance
	// before any instance signs with it.
	JWTVerifyKeyFiles []string
	// VAPIDKeyFile holds the ECDSA P-256 key (PEM) that signs Web Push
	// requests (VAPID), shared by all instances: browsers' subscriptions
	// are bound to its public half. Empty means vapid-p256.pem in
	// DataDir, created on first start.
	VAPIDKeyFile string
	// VAPIDSubject is the mailto: or https: URL the push services may
	// contact the operator at; DefaultVAPIDSubject when empty.
	VAPIDSubject string
	// Push tunes push delivery (its Provider, PublicKey, RedisPrefix and
	// Now are set from here).
	Push push.Config
	// AccessTokenTTL and SessionTTL are the lifetimes of an access token
	// and of a session without a refresh.
	AccessTokenTTL, SessionTTL time.Duration
	// ClientIPHeader names the header a trusted proxy sets to the client's
	// address; empty trusts only the connection's address.
	ClientIPHeader string
	// TrustedProxies are the networks whose connections' ClientIPHeader
	// counts; nil means DefaultTrustedProxies.
	TrustedProxies []netip.Prefix
	// RateLimits bound login and registration attempts; zero means
	// auth.DefaultRateLimits.
	RateLimits auth.RateLimits
	// Sends bounds how fast each user may send messages; zero fields mean
	// chat.DefaultSendLimit's.
	Sends chat.SendLimit
	// Live tunes live delivery (its Prefix and Now are set from here).
	Live live.Config
	// Media tunes uploads and downloads (its Key, RedisPrefix and Now
	// are set from here).
	Media media.Config
	// MediaDir holds uploaded files when MediaS3URL is empty; empty means
	// media under DataDir.
	MediaDir string
	// MediaS3URL names an S3 bucket for uploaded files instead (see
	// media.S3Config).
	MediaS3URL string
	// MediaCleanupAfter is how long an upload may stay unattached before
	// it is deleted; MediaCleanupInterval how often to look (about).
	MediaCleanupAfter, MediaCleanupInterval time.Duration
	// Export tunes data exports (its Keys and Now are set from here).
	Export export.Config
	// WebDir, when set, holds a built web app served at /.
	WebDir string
	// SMTPURL names the SMTP server that sends the server's mail (see
	// mail.NewSMTP); empty: mail is written to the log instead.
	SMTPURL string
	// MailFrom is the sender address of that mail; DefaultMailFrom when
	// empty.
	MailFrom string
	// ReadHeaderTimeout bounds reading a request's headers;
	// RequestBodyTimeout receiving an RPC request's body (not under
	// /media/); UnauthenticatedPerAddress the requests without a caller
	// one client address may have in flight on this instance. Zero means
	// server.DefaultReadHeaderTimeout, server.DefaultRequestBodyTimeout
	// and auth.DefaultUnauthenticatedPerAddress.
	ReadHeaderTimeout, RequestBodyTimeout time.Duration
	UnauthenticatedPerAddress             int
	// Now is the clock; time.Now when nil. Tests move it forward.
	Now func() time.Time
	// Observe, when set, sees every request and every store call made
	// under it; tests and benchmarks count store round trips per RPC with
	// it. Nil in production.
	Observe *Observer
}

// Observer sees a server's requests and its calls to the stores. Each
// field may be nil.
type Observer struct {
	// Handler wraps the server's whole handler, outside authentication,
	// so what it puts in a request's context reaches every store call
	// the request makes.
	Handler func(http.Handler) http.Handler
	// Mongo monitors the MongoDB client's commands.
	Mongo *event.CommandMonitor
	// Redis hooks into the Redis client's commands and pipelines.
	Redis redis.Hook
	// SQL traces PostgreSQL queries (not the embedded SQLite's).
	SQL pgx.QueryTracer
}

// StoreInfo says where one store lives, for the start-up banner.
type StoreInfo struct {
	// Name is "postgres", "mongodb", "redis" or "media".
	Name string
	// Embedded is true when the store runs inside this process.
	Embedded bool
	// Where describes the store's location, without credentials.
	Where string
}

// DefaultMailFrom is the sender of the server's mail unless configured.
const DefaultMailFrom = "Parley <no-reply@localhost>"

// DefaultTrustedProxies are the networks whose connections' client-IP
// header counts unless told otherwise: loopback and the private ranges
// (RFC 1918, RFC 4193), where a reverse proxy in front of Parley runs;
// never the public Internet, whose clients could name any address.
var DefaultTrustedProxies = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("fc00::/7"),
}

func trustedProxies(ps []netip.Prefix) []netip.Prefix {
	if ps == nil {
		return DefaultTrustedProxies
	}
	return ps
}

// App is an assembled server with open stores.
type App struct {
	mail    mail.Sender
	mailTo  string
	cfg     Config
	log     *slog.Logger
	db      *sqldb.DB
	mongo   *mongo.Client
	redis   redis.UniversalClient
	monitor *health.Monitor
	stores  []StoreInfo
	closers []func() error
	handler http.Handler
	hub     *live.Hub
	push    *push.Service
	deps    server.Deps
	storage media.Storage
	tel     *telemetry.Telemetry

	drain     context.Context
	stopDrain context.CancelFunc
	// background is the work requests leave running (mailing reset
	// codes), which Serve waits for before it returns.
	background *auth.Background
}

// Open connects to (or starts) the stores named by cfg and migrates the
// schema. On error, whatever was opened is closed again.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (_ *App, err error) {
	if cfg.MongoDatabase == "" {
		cfg.MongoDatabase = "parley"
	}
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = 2 * time.Second
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 15 * time.Second
	}
	if cfg.AccessTokenTTL <= 0 {
		cfg.AccessTokenTTL = auth.MaxAccessTTL
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 30 * 24 * time.Hour
	}
	if cfg.MediaCleanupAfter <= 0 {
		cfg.MediaCleanupAfter = 24 * time.Hour
	}
	if cfg.MediaCleanupInterval <= 0 {
		cfg.MediaCleanupInterval = 10 * time.Minute
	}
	if cfg.MailFrom == "" {
		cfg.MailFrom = DefaultMailFrom
	}
	// Log lines of traced requests carry their trace id.
	log = slog.New(telemetry.LogHandler(log.Handler()))
	a := &App{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	var extra telemetry.Collectors
	for _, c := range [][]prometheus.Collector{{rpcerr.RateLimited}, live.Collectors(), media.Collectors(), push.Collectors()} {
		extra = append(extra, c...)
	}
	if a.tel, err = telemetry.New(ctx, cfg.Version, extra); err != nil {
		return nil, err
	}
	a.closers = append(a.closers, func() error {
		// Spans still buffered go out before the process ends.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return a.tel.Shutdown(ctx)
	})
	if cfg.usesDataDir() {
		unlock, err := lockDataDir(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		a.closers = append(a.closers, unlock)
	}
	if err := a.openSQL(ctx); err != nil {
		return nil, err
	}
	if err := a.openMongo(ctx); err != nil {
		return nil, err
	}
	if err := a.openRedis(ctx); err != nil {
		return nil, err
	}
	locks, err := doclock.For(ctx, a.Mongo(), a.redis, cfg.RedisPrefix+"lock:")
	if err != nil {
		return nil, fmt.Errorf("mongodb engine: %w", err)
	}

	a.monitor = health.NewMonitor(log, cfg.HealthInterval, 2*time.Second, []health.Probe{
		{Name: "postgres", Ping: a.db.Ping},
		{Name: "mongodb", Ping: func(ctx context.Context) error { return a.mongo.Ping(ctx, readpref.Primary()) }},
		{Name: "redis", Ping: func(ctx context.Context) error { return redisconn.Ping(ctx, a.redis) }},
	}, server.Services...)
	a.monitor.CheckNow(ctx)
	a.drain, a.stopDrain = context.WithCancel(context.Background())

	keyFile, create := cfg.JWTKeyFile, false
	if keyFile == "" {
		keyFile, create = filepath.Join(cfg.DataDir, "jwt-ed25519.pem"), true
	}
	keys, err := keyring.Load(keyFile, create, cfg.JWTVerifyKeyFiles...)
	if err != nil {
		return nil, err
	}
	liveCfg := cfg.Live
	liveCfg.Prefix, liveCfg.Now = cfg.RedisPrefix, cfg.Now
	hub := live.NewHub(log, a.redis, liveCfg)
	a.hub = hub
	a.tel.Registry().MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "parley_live_streams",
		Help: "Live streams (LiveService.Subscribe) open on this instance.",
	}, func() float64 { return float64(hub.Streams()) }))
	// Closers run in reverse: the hub stops before Redis closes.
	a.closers = append(a.closers, hub.Close)
	if err := a.openStorage(ctx); err != nil {
		return nil, err
	}
	if err := a.openMail(); err != nil {
		return nil, err
	}
	if a.push, err = a.openPush(hub); err != nil {
		return nil, err
	}
	a.background = new(auth.Background)
	a.deps = server.Deps{
		Mail:            a.mail,
		Live:            hub,
		Push:            a.push,
		Media:           media.NewLibrary(log, a.mongo.Database(cfg.MongoDatabase), locks, a.storage, cfg.Now),
		MediaConfig:     cfg.Media,
		Sends:           cfg.Sends,
		Export:          cfg.Export,
		WebDir:          cfg.WebDir,
		Log:             log,
		Telemetry:       a.tel,
		Health:          a.monitor,
		Drain:           a.drain,
		Version:         cfg.Version,
		CORSOrigins:     cfg.CORSOrigins,
		MaxRequestBytes: cfg.MaxRequestBytes,
		DB:              a.db,
		Redis:           a.redis,
		Mongo:           a.mongo.Database(cfg.MongoDatabase),
		DocLocks:        locks,
		Now:             cfg.Now,
		Auth: auth.Config{
			Keys:           keys,
			AccessTTL:      cfg.AccessTokenTTL,
			RefreshTTL:     cfg.SessionTTL,
			RateLimits:     cfg.RateLimits,
			RedisPrefix:    cfg.RedisPrefix,
			ClientIPHeader: cfg.ClientIPHeader,
			TrustedProxies: trustedProxies(cfg.TrustedProxies),
			Replicas:       a.waitReplicas(),
			Background:     a.background,
		},
	}
	// Bounds on slow and abusive clients.
	a.deps.RequestBodyTimeout = cfg.RequestBodyTimeout
	a.deps.Auth.UnauthenticatedPerAddress = cfg.UnauthenticatedPerAddress
	a.handler, err = server.New(a.deps)
	if err != nil {
		return nil, err
	}
	if o := cfg.Observe; o != nil && o.Handler != nil {
		a.handler = o.Handler(a.handler)
	}
	return a, nil
}

// DefaultVAPIDSubject is the VAPID subject when none is configured.
const DefaultVAPIDSubject = "mailto:postmaster@localhost"

// openPush loads (or creates) the VAPID key and builds the push service.
func (a *App) openPush(presence push.Presence) (*push.Service, error) {
	keyFile, create := a.cfg.VAPIDKeyFile, false
	if keyFile == "" {
		keyFile, create = filepath.Join(a.cfg.DataDir, "vapid-p256.pem"), true
	}
	key, err := push.LoadOrCreateVAPIDKey(keyFile, create)
	if err != nil {
		return nil, err
	}
	subject := a.cfg.VAPIDSubject
	if subject == "" {
		subject = DefaultVAPIDSubject
	}
	// Pushes go to public addresses only, unless tests run their push
	// service here.
	var client *http.Client
	if a.cfg.Push.InsecureEndpoints {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	provider, err := push.NewWebPush(key, subject, client)
	if err != nil {
		return nil, err
	}
	cfg := a.cfg.Push
	cfg.Provider, cfg.PublicKey = provider, provider.PublicKey()
	cfg.RedisPrefix, cfg.Now = a.cfg.RedisPrefix, a.cfg.Now
	return push.New(a.log, a.redis, presence, cfg)
}

// Push returns the push service.
func (a *App) Push() *push.Service { return a.push }

func (a *App) openStorage(ctx context.Context) error {
	if a.cfg.MediaS3URL != "" {
		s3, err := media.NewS3(ctx, a.cfg.MediaS3URL)
		if err != nil {
			return err
		}
		a.storage = s3
		a.stores = append(a.stores, StoreInfo{Name: "media", Where: "S3 at " + redactURL(a.cfg.MediaS3URL)})
		return nil
	}
	dir := a.cfg.MediaDir
	if dir == "" {
		dir = filepath.Join(a.cfg.DataDir, "media")
	}
	fs, err := media.NewFS(dir)
	if err != nil {
		return err
	}
	a.storage = fs
	a.stores = append(a.stores, StoreInfo{Name: "media", Embedded: true, Where: "files in " + dir})
	return nil
}

// openMail sets up the sender of the server's mail: SMTP when configured,
// else the log.
func (a *App) openMail() error {
	if a.cfg.SMTPURL == "" {
		if _, err := netmail.ParseAddress(a.cfg.MailFrom); err != nil {
			return fmt.Errorf("mail from %q: %w", a.cfg.MailFrom, err)
		}
		a.mail, a.mailTo = mail.NewLog(a.log, a.cfg.MailFrom), ""
		return nil
	}
	s, err := mail.NewSMTP(a.cfg.SMTPURL, a.cfg.MailFrom, nil)
	if err != nil {
		return err
	}
	a.mail, a.mailTo = s, s.String()
	return nil
}

// MailServer describes the SMTP server that sends the server's mail,
// without its password; "" when mail goes to the log.
func (a *App) MailServer() string { return a.mailTo }

// MediaStorage returns where uploaded files are kept.
func (a *App) MediaStorage() media.Storage { return a.storage }

// PurgeChats deletes the chats left without readers up to before
// (chat.Service.Purge), as the instances do now and again.
func (a *App) PurgeChats(ctx context.Context, before time.Time) (int, error) {
	return server.NewChatPurge(a.deps).Purge(ctx, before)
}

// NewMediaJanitor returns a clean-up of uploads unattached for longer
// than after, like the one Serve runs.
func (a *App) NewMediaJanitor(after time.Duration) *media.Janitor {
	return server.NewMediaJanitor(a.deps, after)
}

// NewDeletionSweep returns the account deletions whose Sweep finishes
// those that stopped part-way, as the sweep Serve runs does.
func (a *App) NewDeletionSweep() (*auth.Deletions, error) {
	return server.NewDeletionSweep(a.deps)
}

func (a *App) openSQL(ctx context.Context) error {
	var err error
	if a.cfg.DatabaseURL == "" {
		path := filepath.Join(a.cfg.DataDir, "parley.db")
		if err := mkdirData(a.cfg.DataDir); err != nil {
			return err
		}
		a.db, err = sqldb.OpenSQLite(ctx, path)
		if err != nil {
			return err
		}
		a.stores = append(a.stores, StoreInfo{Name: "postgres", Embedded: true, Where: "SQLite at " + path})
	} else {
		var tracer pgx.QueryTracer
		if a.cfg.Observe != nil {
			tracer = a.cfg.Observe.SQL
		}
		a.db, err = sqldb.OpenPostgresTraced(ctx, a.cfg.DatabaseURL, a.tel.SQLTracer(tracer))
		if err != nil {
			return err
		}
		a.stores = append(a.stores, StoreInfo{Name: "postgres", Where: redactURL(a.cfg.DatabaseURL)})
	}
	a.closers = append(a.closers, a.db.Close)
	if a.cfg.Migrate || a.db.Dialect != "postgres" {
		if err := a.db.Migrate(ctx, a.log); err != nil {
			return err
		}
	}
	// Accounts without a username key (older ones, or made by an older
	// instance during an upgrade) get theirs; collisions are logged.
	if _, err := user.New(a.log, a.db, nil, nil).CheckUsernames(ctx); err != nil {
		return fmt.Errorf("check usernames (are the migrations applied?): %w", err)
	}
	return nil
}

func (a *App) openMongo(ctx context.Context) error {
	uri := a.cfg.MongoURI
	if uri == "" {
		dir := filepath.Join(a.cfg.DataDir, "mongo")
		m, err := embedded.StartMongo(dir, a.log)
		if err != nil {
			return err
		}
		a.closers = append(a.closers, m.Close)
		uri = m.URI()
		a.stores = append(a.stores, StoreInfo{Name: "mongodb", Embedded: true, Where: "FerretDB on SQLite at " + dir})
	} else {
		a.stores = append(a.stores, StoreInfo{Name: "mongodb", Where: redactURL(uri)})
	}
	clientOpts := options.Client().
		ApplyURI(uri).
		SetServerSelectionTimeout(5 * time.Second).
		SetAppName("parley")
	var observe *event.CommandMonitor
	if a.cfg.Observe != nil {
		observe = a.cfg.Observe.Mongo
	}
	clientOpts.SetMonitor(a.tel.MongoMonitor(observe))
	client, err := mongo.Connect(clientOpts)
	if err != nil {
		return fmt.Errorf("connect mongodb: %w", err)
	}
	a.mongo = client
	a.closers = append(a.closers, func() error { return client.Disconnect(context.Background()) })
	if err := client.Ping(ctx, readpref.Primary()); err != nil {
		return fmt.Errorf("ping mongodb: %w", err)
	}
	db := client.Database(a.cfg.MongoDatabase)
	if err := chat.Prepare(ctx, a.log, db); err != nil {
		return err
	}
	if err := export.EnsureIndexes(ctx, db); err != nil {
		return err
	}
	if err := media.EnsureIndexes(ctx, db); err != nil {
		return err
	}
	return nil
}

func (a *App) openRedis(ctx context.Context) error {
	url := a.cfg.RedisURL
	store := StoreInfo{Name: "redis", Where: redactURL(url)}
	if url == "" {
		r, err := embedded.StartRedis()
		if err != nil {
			return err
		}
		a.closers = append(a.closers, r.Close)
		url = r.URL()
		store = StoreInfo{Name: "redis", Embedded: true, Where: "miniredis, in memory"}
	}
	rdb, err := redisconn.Open(ctx, url)
	if err != nil {
		return err
	}
	a.redis = rdb
	if redisconn.IsCluster(rdb) {
		if err := redisconn.CheckPrefix(a.cfg.RedisPrefix); err != nil {
			rdb.Close()
			return err
		}
		store.Where += " (cluster)"
	}
	a.stores = append(a.stores, store)
	if err := a.tel.InstrumentRedis(a.redis); err != nil {
		a.redis.Close()
		return fmt.Errorf("redis: %w", err)
	}
	if a.cfg.Observe != nil && a.cfg.Observe.Redis != nil {
		a.redis.AddHook(a.cfg.Observe.Redis)
	}
	a.closers = append(a.closers, a.redis.Close)
	return nil
}

// waitReplicas is how many replicas confirm a session's end.
func (a *App) waitReplicas() int {
	if n := a.cfg.RedisWaitReplicas; n >= 0 {
		return n
	}
	if redisconn.IsCluster(a.redis) {
		return 1
	}
	return 0
}

// Telemetry returns the server's metrics and tracing.
func (a *App) Telemetry() *telemetry.Telemetry { return a.tel }

// DB returns the relational database.
func (a *App) DB() *sqldb.DB { return a.db }

// Mongo returns the MongoDB database.
func (a *App) Mongo() *mongo.Database { return a.mongo.Database(a.cfg.MongoDatabase) }

// Redis returns the Redis client.
func (a *App) Redis() redis.UniversalClient { return a.redis }

// Live returns the instance's live-delivery hub.
func (a *App) Live() *live.Hub { return a.hub }

// Stores describes where each store lives.
func (a *App) Stores() []StoreInfo { return a.stores }

// Health returns the store monitor behind grpc.health.v1.Health.
func (a *App) Health() *health.Monitor { return a.monitor }

// Handler returns the HTTP handler serving every service.
func (a *App) Handler() http.Handler { return a.handler }

// TLSEnabled reports whether Serve speaks HTTPS.
func (a *App) TLSEnabled() bool {
	return a.cfg.TLSCertFile != "" && a.cfg.TLSKeyFile != ""
}

// Serve serves the API on ln until ctx is done, then shuts down gracefully:
// health and readiness turn NOT_SERVING, the server goes on serving for
// DrainDelay, then open streams end and in-flight requests, and then the
// mails they left sending, get ShutdownTimeout to finish. It returns nil
// after a clean shutdown.
func (a *App) Serve(ctx context.Context, ln net.Listener) error {
	var tlsConfig *tls.Config
	if a.TLSEnabled() {
		cert, err := tls.LoadX509KeyPair(a.cfg.TLSCertFile, a.cfg.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		// The listener negotiates the protocol (ALPN) itself, so it
		// offers HTTP/2 here: http.Server adds it only to the configs
		// it wraps listeners with.
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
		ln = tls.NewListener(ln, tlsConfig)
	}
	srv := server.NewHTTPServer(ln.Addr().String(), a.Handler(), tlsConfig, a.cfg.ReadHeaderTimeout)
	srv.ErrorLog = slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)

	defer runInBackground(func(ctx context.Context) { a.monitor.Run(ctx) })()
	defer runInBackground(func(ctx context.Context) {
		a.NewMediaJanitor(a.cfg.MediaCleanupAfter).Run(ctx, a.cfg.MediaCleanupInterval)
	})()

	// Every instance makes exports; a job in progress at shutdown is
	// handed back for another instance (or this one, restarted).
	defer runInBackground(func(ctx context.Context) { server.NewExportWorker(a.deps).Run(ctx) })()

	// Account deletions that stopped part-way (on any instance) are
	// finished at start-up and then now and again.
	sweep, err := a.NewDeletionSweep()
	if err != nil {
		return err
	}
	defer runInBackground(func(ctx context.Context) { sweep.Run(ctx, auth.DeletionSweepInterval) })()

	// Chats left without readers go, from every instance.
	defer runInBackground(func(ctx context.Context) { server.NewChatPurge(a.deps).RunPurge(ctx, chat.PurgeInterval) })()

	// Push workers stop before the stores close.
	defer runInBackground(func(ctx context.Context) { a.push.Run(ctx) })()

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	a.log.Info("shutting down", "drain_delay", a.cfg.DrainDelay)
	a.monitor.Shutdown()
	if a.cfg.DrainDelay > 0 {
		t := time.NewTimer(a.cfg.DrainDelay)
		select {
		case <-t.C:
		case err := <-serveErr:
			t.Stop()
			return fmt.Errorf("serve: %w", err)
		}
	}
	a.stopDrain()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	err = srv.Shutdown(shutdownCtx)
	// Then, before the stores close, the mails that requests left
	// sending, in what is left of the time.
	a.waitBackground(shutdownCtx)
	if errors.Is(err, context.DeadlineExceeded) {
		srv.Close()
		return fmt.Errorf("shutdown: requests still running after %s", a.cfg.ShutdownTimeout)
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// waitBackground waits until ctx is done for the work that requests left
// running (see auth.Background).
func (a *App) waitBackground(ctx context.Context) {
	n := a.background.Running()
	if n == 0 {
		return
	}
	a.log.Info("shutting down: waiting for mails in flight", "mails", n)
	if err := a.background.Wait(ctx); err != nil {
		a.log.Error("shutting down: mails in flight abandoned", "err", err)
	}
}

// Close closes the stores and stops the embedded ones, in reverse order of
// opening.
func (a *App) Close() error {
	var errs []error
	for i := len(a.closers) - 1; i >= 0; i-- {
		errs = append(errs, a.closers[i]())
	}
	a.closers = nil
	return errors.Join(errs...)
}

// MediaLibrary returns the uploads' library, as the chat and user
// services use it (tests call it to stop a change half-way).
func (a *App) MediaLibrary() *media.Library { return a.deps.Media }

// DocLocks returns the per-document locks the stores use, nil where the
// document engine needs none (see doclock).
func (a *App) DocLocks() *doclock.Locks { return a.deps.DocLocks }

// runInBackground runs run in a goroutine until the returned stop
// cancels its context, and stop returns once run has returned. Serve
// defers the stops, so its background work ends, last started first,
// before the stores close.
func runInBackground(run func(ctx context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}
