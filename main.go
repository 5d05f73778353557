// Command parley is the Parley messenger server.
//
// Run with no configuration, it starts a complete server with embedded
// stores under ./data; pointed at PostgreSQL, MongoDB and Redis it is the
// production server. `parley migrate` applies the PostgreSQL migrations and
// exits. See README.md and `parley -help` for the configuration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/parley-chat/parley/server"
	"github.com/parley-chat/parley/server/admin"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/export"
	"github.com/parley-chat/parley/server/live"
	"github.com/parley-chat/parley/server/media"
	"github.com/parley-chat/parley/server/push"
	"github.com/parley-chat/parley/server/sqldb"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// The first signal drains; a second one ends the process at once.
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "parley:", err)
		}
		os.Exit(1)
	}
}

// options are the parsed command line.
type options struct {
	app       app.Config
	addr      string
	adminAddr string
	logFormat string
	logLevel  slog.Level
	migrate   bool // the "migrate" subcommand
}

// run is the whole program: it parses args (with environment fallbacks read
// through getenv), starts the server and serves until ctx is done.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	opts, err := parseArgs(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := newLogger(stderr, opts.logFormat, opts.logLevel)

	if opts.migrate {
		return migrate(ctx, opts, log, stdout)
	}

	a, err := app.Open(ctx, opts.app, log)
	if err != nil {
		return err
	}
	defer a.Close()

	ln, err := net.Listen("tcp", opts.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	var adminAddr net.Addr
	if opts.adminAddr != "" {
		aln, err := net.Listen("tcp", opts.adminAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("admin listen: %w", err)
		}
		adminAddr = aln.Addr()
		// Profiles take as long as they are asked to (?seconds=30): no
		// write timeout.
		adminSrv := &http.Server{Handler: admin.Handler(a.Telemetry().Handler(), a.Health()), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := adminSrv.Serve(aln); !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin listener", "err", err)
			}
		}()
		defer adminSrv.Close()
	}
	printBanner(stdout, a, ln.Addr(), adminAddr)
	log.Info("serving", "addr", ln.Addr().String(), "version", opts.app.Version)
	if adminAddr != nil {
		log.Info("admin listener", "addr", adminAddr.String())
	}
	return a.Serve(ctx, ln)
}

func migrate(ctx context.Context, opts options, log *slog.Logger, stdout io.Writer) error {
	if opts.app.DatabaseURL == "" {
		return errors.New("migrate: set -database-url or PARLEY_DATABASE_URL (the embedded SQLite database migrates itself at start-up)")
	}
	db, err := sqldb.OpenPostgres(ctx, opts.app.DatabaseURL)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := db.Migrate(ctx, log); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "PostgreSQL schema is up to date")
	return nil
}

func printBanner(w io.Writer, a *app.App, addr, adminAddr net.Addr) {
	scheme := "http"
	if a.TLSEnabled() {
		scheme = "https"
	}
	base := fmt.Sprintf("%s://%s", scheme, hostPort(addr))

	fmt.Fprintf(w, "Parley is listening on %s (Connect, gRPC and gRPC-Web over HTTP/1.1 and HTTP/2)\n", base)
	for _, s := range a.Stores() {
		kind := "external"
		if s.Embedded {
			kind = "embedded"
		}
		fmt.Fprintf(w, "  %-8s %s: %s\n", s.Name, kind, s.Where)
	}
	if note := sharingNote(a.Stores()); note != "" {
		fmt.Fprintf(w, "  %-8s %s\n", "note", note)
	}
	if smtp := a.MailServer(); smtp != "" {
		fmt.Fprintf(w, "  %-8s SMTP at %s\n", "mail", smtp)
	} else {
		fmt.Fprintf(w, "  %-8s no -smtp-url: mails are written to the log, not sent\n", "mail")
	}
	if adminAddr != nil {
		fmt.Fprintf(w, "Admin (metrics, probes, profiles) on http://%s/metrics, /readyz and /debug/pprof/\n", hostPort(adminAddr))
	}
	fmt.Fprintf(w, "Try it:\n  curl -s -H 'Content-Type: application/json' -d '{}' %s/grpc.health.v1.Health/Check\n", base)
}

// sharingNote warns of a Redis embedded beside shared databases: the
// set-up of several instances, but each would keep its own sessions,
// limits and live events, and tokens of one would fail on the others.
func sharingNote(stores []app.StoreInfo) string {
	redisEmbedded, shared := false, false
	for _, s := range stores {
		switch {
		case s.Name == "redis" && s.Embedded:
			redisEmbedded = true
		case (s.Name == "postgres" || s.Name == "mongodb") && !s.Embedded:
			shared = true
		}
	}
	if !redisEmbedded || !shared {
		return ""
	}
	return "Redis is embedded while the databases are not: run one instance only, or give every instance -redis-url and the same -jwt-key-file"
}

// hostPort returns addr as a client would dial it: localhost for an
// address that listens on every interface.
func hostPort(addr net.Addr) string {
	host := "localhost"
	if tcp, ok := addr.(*net.TCPAddr); ok && !tcp.IP.IsUnspecified() {
		host = tcp.IP.String()
	}
	_, port, _ := net.SplitHostPort(addr.String())
	return net.JoinHostPort(host, port)
}

func parseArgs(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	var opts options
	name := "parley"
	if len(args) > 0 {
		args = args[1:]
	}
	if len(args) > 0 && args[0] == "migrate" {
		opts.migrate = true
		name = "parley migrate"
		args = args[1:]
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s [flags]\n\n", name)
		fmt.Fprintln(stderr, "Runs the Parley messenger server; `parley migrate` applies the PostgreSQL")
		fmt.Fprintln(stderr, "migrations and exits. Every flag falls back to the environment variable")
		fmt.Fprintln(stderr, "named in its description. With no store URL set, embedded stores are")
		fmt.Fprint(stderr, "started under the data directory.\n\n")
		fs.PrintDefaults()
	}
	e := envReader{getenv: getenv}
	c := &opts.app
	fs.StringVar(&opts.addr, "addr", e.str("PARLEY_ADDR", ":8080"), "listen `address` (PARLEY_ADDR)")
	fs.StringVar(&opts.adminAddr, "admin-addr", e.str("PARLEY_ADMIN_ADDR", ""), "listen `address` of the admin listener (Prometheus metrics at /metrics, probes, pprof profiles, memory statistics), such as 127.0.0.1:9090; never the public one; empty: off (PARLEY_ADMIN_ADDR)")
	fs.StringVar(&c.DataDir, "data-dir", e.str("PARLEY_DATA_DIR", "./data"), "`directory` for the embedded stores' files (PARLEY_DATA_DIR)")
	fs.StringVar(&c.DatabaseURL, "database-url", e.str("PARLEY_DATABASE_URL", ""), "PostgreSQL connection `URL`; empty: embedded SQLite (PARLEY_DATABASE_URL)")
	fs.StringVar(&c.MongoURI, "mongo-uri", e.str("PARLEY_MONGO_URI", ""), "MongoDB connection `URI`; empty: embedded FerretDB (PARLEY_MONGO_URI)")
	fs.StringVar(&c.MongoDatabase, "mongo-database", e.str("PARLEY_MONGO_DATABASE", "parley"), "MongoDB database `name` (PARLEY_MONGO_DATABASE)")
	fs.StringVar(&c.RedisURL, "redis-url", e.str("PARLEY_REDIS_URL", ""), "Redis `URL` (redis:// or rediss://), of a single server or of any node of a Redis Cluster (more with addr=host:port parameters); empty: embedded miniredis (PARLEY_REDIS_URL)")
	fs.IntVar(&c.RedisWaitReplicas, "redis-wait-replicas", int(e.int64("PARLEY_REDIS_WAIT_REPLICAS", -1)), "Redis replicas that must confirm a session's end or a refresh token's rotation (WAIT) before it is answered, so that a failover cannot undo it; -1: 1 on a Redis Cluster, 0 on a single server (PARLEY_REDIS_WAIT_REPLICAS)")
	fs.StringVar(&c.RedisPrefix, "redis-prefix", e.str("PARLEY_REDIS_PREFIX", "parley:"), "`prefix` of every Redis key and channel (PARLEY_REDIS_PREFIX)")
	fs.BoolVar(&c.Migrate, "migrate", e.boolean("PARLEY_MIGRATE", true), "apply pending PostgreSQL migrations at start-up (PARLEY_MIGRATE)")
	fs.StringVar(&c.TLSCertFile, "tls-cert", e.str("PARLEY_TLS_CERT", ""), "TLS certificate `file`; with -tls-key, serve HTTPS and HTTP/2 over TLS (PARLEY_TLS_CERT)")
	fs.StringVar(&c.TLSKeyFile, "tls-key", e.str("PARLEY_TLS_KEY", ""), "TLS private key `file` (PARLEY_TLS_KEY)")
	cors := fs.String("cors-origins", e.str("PARLEY_CORS_ORIGINS", ""), "comma-separated browser `origins` allowed to call the API, or *; empty: CORS off (PARLEY_CORS_ORIGINS)")
	fs.StringVar(&opts.logFormat, "log-format", e.str("PARLEY_LOG_FORMAT", "text"), "log `format`: text or json (PARLEY_LOG_FORMAT)")
	level := fs.String("log-level", e.str("PARLEY_LOG_LEVEL", "info"), "log `level`: debug, info, warn or error (PARLEY_LOG_LEVEL)")
	fs.Int64Var(&c.MaxRequestBytes, "max-request-bytes", e.int64("PARLEY_MAX_REQUEST_BYTES", server.DefaultMaxRequestBytes), "largest request message in `bytes` (PARLEY_MAX_REQUEST_BYTES)")
	fs.DurationVar(&c.HealthInterval, "health-interval", e.duration("PARLEY_HEALTH_INTERVAL", 2*time.Second), "how often the stores are pinged for health (PARLEY_HEALTH_INTERVAL)")
	fs.DurationVar(&c.DrainDelay, "drain-delay", e.duration("PARLEY_DRAIN_DELAY", 0), "how long a stopping server goes on serving while /readyz and health say it is not ready, for load balancers to move away; 0: stop at once (PARLEY_DRAIN_DELAY)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", e.duration("PARLEY_SHUTDOWN_TIMEOUT", 15*time.Second), "time in-flight requests, then the mails they left sending, get to finish on shutdown (PARLEY_SHUTDOWN_TIMEOUT)")
	fs.StringVar(&c.JWTKeyFile, "jwt-key-file", e.str("PARLEY_JWT_KEY_FILE", ""), "PEM `file` with the Ed25519 key that signs access and refresh tokens and media URLs, shared by all instances; empty: jwt-ed25519.pem in the data directory, created if missing (PARLEY_JWT_KEY_FILE)")
	fs.StringVar(&c.VAPIDKeyFile, "vapid-key-file", e.str("PARLEY_VAPID_KEY_FILE", ""), "PEM `file` with the ECDSA P-256 key that signs Web Push requests (VAPID), shared by all instances; empty: vapid-p256.pem in the data directory, created if missing (PARLEY_VAPID_KEY_FILE)")
	fs.StringVar(&c.VAPIDSubject, "vapid-subject", e.str("PARLEY_VAPID_SUBJECT", app.DefaultVAPIDSubject), "mailto: or https: `URL` at which push services can reach the operator, sent with every push (PARLEY_VAPID_SUBJECT)")
	fs.IntVar(&c.Push.Workers, "push-workers", int(e.int64("PARLEY_PUSH_WORKERS", push.DefaultWorkers)), "push delivery workers on this instance; negative: none, the other instances deliver (PARLEY_PUSH_WORKERS)")
	verifyKeys := fs.String("jwt-verify-key-files", e.str("PARLEY_JWT_VERIFY_KEY_FILES", ""), "comma-separated PEM `files` with retired signing keys (Ed25519 private keys) whose tokens still verify, for key rotation; see the README (PARLEY_JWT_VERIFY_KEY_FILES)")
	fs.DurationVar(&c.AccessTokenTTL, "access-token-ttl", e.duration("PARLEY_ACCESS_TOKEN_TTL", auth.MaxAccessTTL), "lifetime of an access token, at most 15m (PARLEY_ACCESS_TOKEN_TTL)")
	fs.DurationVar(&c.SessionTTL, "session-ttl", e.duration("PARLEY_SESSION_TTL", 30*24*time.Hour), "how long a session lasts without a refresh (PARLEY_SESSION_TTL)")
	fs.StringVar(&c.ClientIPHeader, "client-ip-header", e.str("PARLEY_CLIENT_IP_HEADER", ""), "`header` a trusted reverse proxy sets to the client's IP, e.g. X-Real-IP; empty: use the connection's address (PARLEY_CLIENT_IP_HEADER)")
	trusted := fs.String("trusted-proxies", e.str("PARLEY_TRUSTED_PROXIES", prefixList(app.DefaultTrustedProxies)), "comma-separated `networks` (CIDR, or single addresses) whose connections' -client-ip-header counts; from other peers it is ignored; none: no peer (PARLEY_TRUSTED_PROXIES)")
	rl := auth.DefaultRateLimits
	fs.IntVar(&c.RateLimits.LoginFailuresPerAccount, "login-failures-per-account", int(e.int64("PARLEY_LOGIN_FAILURES_PER_ACCOUNT", int64(rl.LoginFailuresPerAccount))), "failed logins one account may have from one client address per -login-window (PARLEY_LOGIN_FAILURES_PER_ACCOUNT)")
	fs.IntVar(&c.RateLimits.LoginFailuresPerAccountTotal, "login-failures-per-account-total", int(e.int64("PARLEY_LOGIN_FAILURES_PER_ACCOUNT_TOTAL", int64(rl.LoginFailuresPerAccountTotal))), "failed logins one account may have from all addresses per -login-window, past which only the networks it signed in from lately may try; 0: three times -login-failures-per-account (PARLEY_LOGIN_FAILURES_PER_ACCOUNT_TOTAL)")
	fs.IntVar(&c.RateLimits.LoginAttemptsPerAddress, "login-attempts-per-address", int(e.int64("PARLEY_LOGIN_ATTEMPTS_PER_ADDRESS", int64(rl.LoginAttemptsPerAddress))), "logins one client address may attempt per -login-window (PARLEY_LOGIN_ATTEMPTS_PER_ADDRESS)")
	fs.DurationVar(&c.RateLimits.LoginWindow, "login-window", e.duration("PARLEY_LOGIN_WINDOW", rl.LoginWindow), "window of the login limits (PARLEY_LOGIN_WINDOW)")
	fs.IntVar(&c.RateLimits.RegistrationsPerAddress, "registrations-per-address", int(e.int64("PARLEY_REGISTRATIONS_PER_ADDRESS", int64(rl.RegistrationsPerAddress))), "accounts one client address may create per -registration-window (PARLEY_REGISTRATIONS_PER_ADDRESS)")
	fs.DurationVar(&c.RateLimits.RegistrationWindow, "registration-window", e.duration("PARLEY_REGISTRATION_WINDOW", rl.RegistrationWindow), "window of the registration limit (PARLEY_REGISTRATION_WINDOW)")
	fs.IntVar(&c.Live.QueueSize, "live-queue", int(e.int64("PARLEY_LIVE_QUEUE", 256)), "events a live stream may have waiting before it is closed as too slow (PARLEY_LIVE_QUEUE)")
	fs.DurationVar(&c.Live.Heartbeat, "live-heartbeat", e.duration("PARLEY_LIVE_HEARTBEAT", 15*time.Second), "heartbeat interval of idle live streams, and of presence renewal (PARLEY_LIVE_HEARTBEAT)")
	fs.DurationVar(&c.Live.WriteTimeout, "live-write-timeout", e.duration("PARLEY_LIVE_WRITE_TIMEOUT", 30*time.Second), "a live stream whose client takes no event for this long is closed (PARLEY_LIVE_WRITE_TIMEOUT)")
	fs.IntVar(&c.Live.MaxEvents, "live-max-events", int(e.int64("PARLEY_LIVE_MAX_EVENTS", 10000)), "about how many events each user's log keeps for resuming streams (PARLEY_LIVE_MAX_EVENTS)")
	fs.DurationVar(&c.Live.Retention, "live-retention", e.duration("PARLEY_LIVE_RETENTION", 7*24*time.Hour), "how long a user's event log is kept after its last event (PARLEY_LIVE_RETENTION)")
	fs.IntVar(&c.Live.MaxStreamsPerSession, "live-max-streams-per-session", int(e.int64("PARLEY_LIVE_MAX_STREAMS_PER_SESSION", live.DefaultMaxStreamsPerSession)), "live streams one session may have open at once, over all instances (PARLEY_LIVE_MAX_STREAMS_PER_SESSION)")
	fs.IntVar(&c.Live.MaxStreamsPerUser, "live-max-streams-per-user", int(e.int64("PARLEY_LIVE_MAX_STREAMS_PER_USER", live.DefaultMaxStreamsPerUser)), "live streams one user may have open at once, over all sessions and instances (PARLEY_LIVE_MAX_STREAMS_PER_USER)")
	fs.StringVar(&c.SMTPURL, "smtp-url", e.str("PARLEY_SMTP_URL", ""), "SMTP server `URL` for the account mails (verification, password reset): smtp://user:pass@host:port uses STARTTLS when the server offers it, smtp+starttls:// requires it, smtps:// is TLS from the start; empty: mails are written to the log (PARLEY_SMTP_URL)")
	fs.StringVar(&c.MailFrom, "mail-from", e.str("PARLEY_MAIL_FROM", app.DefaultMailFrom), "sender `address` of the account mails (PARLEY_MAIL_FROM)")
	fs.StringVar(&c.WebDir, "web-dir", e.str("PARLEY_WEB_DIR", ""), "`directory` of a built web app to serve at /, such as clients/web/dist (PARLEY_WEB_DIR)")
	fs.StringVar(&c.MediaDir, "media-dir", e.str("PARLEY_MEDIA_DIR", ""), "`directory` for uploaded files, shared by all instances; empty: media in the data directory (PARLEY_MEDIA_DIR)")
	fs.StringVar(&c.MediaS3URL, "media-s3-url", e.str("PARLEY_MEDIA_S3_URL", ""), "S3-compatible bucket `URL` for uploaded files instead, as https://KEY:SECRET@host/bucket?region=R; without KEY:SECRET the AWS_* environment or IAM role is used (PARLEY_MEDIA_S3_URL)")
	fs.Int64Var(&c.Media.MaxImageBytes, "media-max-image-bytes", e.int64("PARLEY_MEDIA_MAX_IMAGE_BYTES", media.DefaultMaxImageBytes), "largest image upload in `bytes` (PARLEY_MEDIA_MAX_IMAGE_BYTES)")
	fs.Int64Var(&c.Media.MaxVideoBytes, "media-max-video-bytes", e.int64("PARLEY_MEDIA_MAX_VIDEO_BYTES", media.DefaultMaxVideoBytes), "largest video upload in `bytes` (PARLEY_MEDIA_MAX_VIDEO_BYTES)")
	fs.Int64Var(&c.Media.MaxFileBytes, "media-max-file-bytes", e.int64("PARLEY_MEDIA_MAX_FILE_BYTES", media.DefaultMaxFileBytes), "largest upload of any other file in `bytes` (PARLEY_MEDIA_MAX_FILE_BYTES)")
	fs.IntVar(&c.Media.Images.MaxPixels, "media-max-image-pixels", int(e.int64("PARLEY_MEDIA_MAX_IMAGE_PIXELS", int64(media.DefaultImageLimits.MaxPixels))), "largest image in pixels (width × height), checked before decoding (PARLEY_MEDIA_MAX_IMAGE_PIXELS)")
	fs.DurationVar(&c.Media.UploadTTL, "media-upload-ttl", e.duration("PARLEY_MEDIA_UPLOAD_TTL", media.DefaultUploadTTL), "how long an upload URL is accepted (PARLEY_MEDIA_UPLOAD_TTL)")
	fs.DurationVar(&c.Media.DownloadTTL, "media-download-ttl", e.duration("PARLEY_MEDIA_DOWNLOAD_TTL", media.DefaultDownloadTTL), "how long a signed download URL works (PARLEY_MEDIA_DOWNLOAD_TTL)")
	fs.DurationVar(&c.MediaCleanupAfter, "media-cleanup-after", e.duration("PARLEY_MEDIA_CLEANUP_AFTER", 24*time.Hour), "uploads not sent or made an avatar within this (of their creation, or of their file's arrival) are deleted (PARLEY_MEDIA_CLEANUP_AFTER)")
	fs.DurationVar(&c.MediaCleanupInterval, "media-cleanup-interval", e.duration("PARLEY_MEDIA_CLEANUP_INTERVAL", 10*time.Minute), "about how often each instance looks for uploads to delete (PARLEY_MEDIA_CLEANUP_INTERVAL)")
	fs.DurationVar(&c.Export.TTL, "export-ttl", e.duration("PARLEY_EXPORT_TTL", export.DefaultTTL), "how long a finished data export is kept, and its signed download URL works (PARLEY_EXPORT_TTL)")
	fs.DurationVar(&c.Export.PollInterval, "export-interval", e.duration("PARLEY_EXPORT_INTERVAL", export.DefaultPollInterval), "about how often each instance looks for data exports to make (PARLEY_EXPORT_INTERVAL)")
	fs.StringVar(&c.Export.TempDir, "export-temp-dir", e.str("PARLEY_EXPORT_TEMP_DIR", ""), "`directory` where data exports are written before they are stored; empty: the system's temporary directory (PARLEY_EXPORT_TEMP_DIR)")
	fs.IntVar(&c.Sends.Rate, "send-rate", int(e.int64("PARLEY_SEND_RATE", int64(chat.DefaultSendLimit.Rate))), "messages one user may send a second, on average, over all instances; and, in a budget of their own, changes to messages and chats (PARLEY_SEND_RATE)")
	fs.IntVar(&c.Sends.Burst, "send-burst", int(e.int64("PARLEY_SEND_BURST", int64(chat.DefaultSendLimit.Burst))), "messages (and changes) one user may send at once after a pause, above -send-rate (PARLEY_SEND_BURST)")
	fs.IntVar(&c.Media.MaxConcurrentUploads, "media-max-concurrent-uploads", int(e.int64("PARLEY_MEDIA_MAX_CONCURRENT_UPLOADS", media.DefaultMaxConcurrentUploads)), "upload bodies one user may send at once, over all instances (PARLEY_MEDIA_MAX_CONCURRENT_UPLOADS)")
	fs.Int64Var(&c.Media.MaxUnsentBytes, "media-max-unsent-bytes", e.int64("PARLEY_MEDIA_MAX_UNSENT_BYTES", media.DefaultMaxUnsentBytes), "`bytes` of uploads one user may have that are not sent in a message or made an avatar (declared sizes, counted from CreateUpload) (PARLEY_MEDIA_MAX_UNSENT_BYTES)")
	fs.Int64Var(&c.Media.MinUploadRate, "media-min-upload-rate", e.int64("PARLEY_MEDIA_MIN_UPLOAD_RATE", media.DefaultMinUploadRate), "`bytes` a second an upload body must bring, averaged over -media-upload-rate-window, or it ends (PARLEY_MEDIA_MIN_UPLOAD_RATE)")
	fs.DurationVar(&c.Media.UploadRateWindow, "media-upload-rate-window", e.duration("PARLEY_MEDIA_UPLOAD_RATE_WINDOW", media.DefaultUploadRateWindow), "window of -media-min-upload-rate (PARLEY_MEDIA_UPLOAD_RATE_WINDOW)")
	fs.DurationVar(&c.ReadHeaderTimeout, "read-header-timeout", e.duration("PARLEY_READ_HEADER_TIMEOUT", server.DefaultReadHeaderTimeout), "time a client has to send a request's headers (PARLEY_READ_HEADER_TIMEOUT)")
	fs.DurationVar(&c.RequestBodyTimeout, "request-body-timeout", e.duration("PARLEY_REQUEST_BODY_TIMEOUT", server.DefaultRequestBodyTimeout), "time a client has to send a whole RPC request body, not counting /media/ uploads; responses and streams are not bounded by it (PARLEY_REQUEST_BODY_TIMEOUT)")
	fs.IntVar(&c.UnauthenticatedPerAddress, "unauthenticated-per-address", int(e.int64("PARLEY_UNAUTHENTICATED_PER_ADDRESS", auth.DefaultUnauthenticatedPerAddress)), "requests without signing in (sign-in, server info, health) one client address may have in flight on this instance at once (PARLEY_UNAUTHENTICATED_PER_ADDRESS)")
	if e.err != nil {
		return opts, e.err
	}
	if err := fs.Parse(args); err != nil {
		return opts, err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return opts, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := opts.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return opts, fmt.Errorf("-log-level: %w", err)
	}
	if opts.logFormat != "text" && opts.logFormat != "json" {
		return opts, fmt.Errorf("-log-format: want text or json, got %q", opts.logFormat)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return opts, errors.New("-tls-cert and -tls-key go together")
	}
	if c.AccessTokenTTL <= 0 || c.AccessTokenTTL > auth.MaxAccessTTL {
		return opts, fmt.Errorf("-access-token-ttl: want more than 0 and at most %s", auth.MaxAccessTTL)
	}
	if c.Media.MaxImageBytes <= 0 || c.Media.MaxVideoBytes <= 0 || c.Media.MaxFileBytes <= 0 || c.Media.Images.MaxPixels <= 0 {
		return opts, errors.New("-media-max-* must be positive")
	}
	if c.MediaCleanupAfter <= c.Media.UploadTTL {
		return opts, errors.New("-media-cleanup-after must be longer than -media-upload-ttl")
	}
	if c.MaxRequestBytes <= 0 {
		return opts, errors.New("-max-request-bytes must be positive")
	}
	if c.Live.MaxStreamsPerSession <= 0 || c.Live.MaxStreamsPerUser < c.Live.MaxStreamsPerSession {
		return opts, errors.New("-live-max-streams-per-session must be positive, and -live-max-streams-per-user at least as large")
	}
	if c.Sends.Rate <= 0 || c.Sends.Burst <= 0 || c.Media.MaxConcurrentUploads <= 0 || c.Media.MaxUnsentBytes <= 0 ||
		c.Media.MinUploadRate <= 0 || c.Media.UploadRateWindow <= 0 {
		return opts, errors.New("-send-rate, -send-burst, -media-max-concurrent-uploads, -media-max-unsent-bytes, -media-min-upload-rate and -media-upload-rate-window must be positive")
	}
	if c.ReadHeaderTimeout <= 0 || c.RequestBodyTimeout <= 0 || c.UnauthenticatedPerAddress <= 0 {
		return opts, errors.New("-read-header-timeout, -request-body-timeout and -unauthenticated-per-address must be positive")
	}
	if _, port, _ := net.SplitHostPort(opts.addr); opts.adminAddr != "" && opts.adminAddr == opts.addr && port != "0" {
		return opts, errors.New("-admin-addr must differ from -addr: the admin listener is never the public one")
	}
	c.CORSOrigins = splitList(*cors)
	c.JWTVerifyKeyFiles = splitList(*verifyKeys)
	c.TrustedProxies = []netip.Prefix{}
	for _, v := range splitList(*trusted) {
		if v == "none" {
			continue
		}
		p, err := netip.ParsePrefix(v)
		if err != nil {
			a, aerr := netip.ParseAddr(v)
			if aerr != nil {
				return opts, fmt.Errorf("-trusted-proxies: %q is neither a network (CIDR) nor an address", v)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		// Peers are matched unmapped: an IPv4-mapped network is its IPv4 one.
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		c.TrustedProxies = append(c.TrustedProxies, p.Masked())
	}
	c.Version = version()
	return opts, nil
}

// prefixList is the flag value of networks.
func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// splitList splits a comma-separated flag value, dropping empty entries.
func splitList(s string) []string {
	var list []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			list = append(list, v)
		}
	}
	return list
}

// envReader reads flag defaults from the environment, keeping the first
// malformed value as an error.
type envReader struct {
	getenv func(string) string
	err    error
}

func (e *envReader) str(key, def string) string {
	if v := e.getenv(key); v != "" {
		return v
	}
	return def
}

func (e *envReader) boolean(key string, def bool) bool {
	v := e.getenv(key)
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil && e.err == nil {
		e.err = fmt.Errorf("%s: %w", key, err)
	}
	return b
}

func (e *envReader) int64(key string, def int64) int64 {
	v := e.getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil && e.err == nil {
		e.err = fmt.Errorf("%s: %w", key, err)
	}
	return n
}

func (e *envReader) duration(key string, def time.Duration) time.Duration {
	v := e.getenv(key)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil && e.err == nil {
		e.err = fmt.Errorf("%s: %w", key, err)
	}
	return d
}

func newLogger(w io.Writer, format string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// version is the module version the binary was built from, or "devel".
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
