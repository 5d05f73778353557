package server

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/http"
	"runtime/debug"
	"slices"
	"time"

	"connectrpc.com/connect"
	connectcors "connectrpc.com/cors"
	"connectrpc.com/grpcreflect"
	"connectrpc.com/validate"
	"github.com/redis/go-redis/v9"
	"github.com/rs/cors"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/doclock"
	"github.com/parley-chat/parley/server/export"
	"github.com/parley-chat/parley/server/health"
	"github.com/parley-chat/parley/server/info"
	"github.com/parley-chat/parley/server/live"
	"github.com/parley-chat/parley/server/mail"
	"github.com/parley-chat/parley/server/media"
	"github.com/parley-chat/parley/server/push"
	"github.com/parley-chat/parley/server/reqlog"
	"github.com/parley-chat/parley/server/sqldb"
	"github.com/parley-chat/parley/server/telemetry"
	"github.com/parley-chat/parley/server/user"
)

// DefaultMaxRequestBytes is the default limit on one request message.
const DefaultMaxRequestBytes = 4 << 20

// Deps is everything the handlers need, built once by the caller.
type Deps struct {
	// Log receives request lines and internal errors.
	Log *slog.Logger
	// Telemetry times and traces every RPC; nil: neither.
	Telemetry *telemetry.Telemetry
	// Health answers grpc.health.v1.Health; it reflects the stores' state.
	Health *health.Monitor
	// Drain is cancelled when the server starts shutting down; open streams
	// end then.
	Drain context.Context
	// Version is the build version reported by ServerService.
	Version string
	// CORSOrigins lists the browser origins allowed to call the API; "*"
	// allows any. Empty disables CORS.
	CORSOrigins []string
	// MaxRequestBytes limits the size of one request message;
	// DefaultMaxRequestBytes when zero.
	MaxRequestBytes int64
	// RequestBodyTimeout bounds receiving a request body outside /media/
	// (see withBodyDeadline); DefaultRequestBodyTimeout when zero.
	RequestBodyTimeout time.Duration
	// DB holds users, profiles and avatars.
	DB *sqldb.DB
	// Mongo holds chats and messages.
	Mongo *mongo.Database
	// DocLocks serialize the updates of one document where the document
	// engine does not (FerretDB 1.x, see doclock); nil on MongoDB and
	// FerretDB 2.
	DocLocks *doclock.Locks
	// Redis holds sessions and rate-limit counters.
	Redis redis.UniversalClient
	// Auth configures tokens, sessions and rate limits.
	Auth auth.Config
	// Live is the instance's live-delivery hub.
	Live *live.Hub
	// Media keeps uploaded files; MediaConfig tunes uploads and downloads
	// (its Key, RedisPrefix and Now are taken from Auth and Now).
	Media       *media.Library
	MediaConfig media.Config
	// Sends bounds how fast each user may send messages; zero fields
	// mean chat.DefaultSendLimit's.
	Sends chat.SendLimit
	// Export tunes data exports (its Keys and Now are taken from Auth and
	// Now); their zips go to Media's storage.
	Export export.Config
	// Mail sends the account mails (verification, password reset); nil:
	// they are logged to Log.
	Mail mail.Sender
	// Push sends push notifications and serves PushService; New wires
	// it to the chats' events and the sessions' ends (its workers run
	// apart: push.Service.Run). Nil: no pushes, no PushService.
	Push *push.Service
	// WebDir, when set, holds a built web app (clients/web/dist) served
	// at / without authentication.
	WebDir string
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Services lists the fully-qualified names of the API services New mounts.
var Services = []string{
	parleyv1connect.ServerServiceName,
	parleyv1connect.AuthServiceName,
	parleyv1connect.AccountServiceName,
	parleyv1connect.UserServiceName,
	parleyv1connect.AvatarServiceName,
	parleyv1connect.ChatServiceName,
	parleyv1connect.MessageServiceName,
	parleyv1connect.LiveServiceName,
	parleyv1connect.MediaServiceName,
	parleyv1connect.PrivacyServiceName,
	parleyv1connect.ExportServiceName,
	parleyv1connect.PushServiceName,
}

// public lists what may be called without signing in.
var public = auth.Public{
	Procedures: map[string]bool{
		parleyv1connect.AuthServiceRegisterProcedure:        true,
		parleyv1connect.AuthServiceLoginProcedure:           true,
		parleyv1connect.AuthServiceRefreshProcedure:         true,
		parleyv1connect.ServerServiceGetServerInfoProcedure: true,
		// The mailed code or token is their proof.
		parleyv1connect.AccountServiceRequestPasswordResetProcedure: true,
		parleyv1connect.AccountServiceResetPasswordProcedure:        true,
		parleyv1connect.AccountServiceVerifyEmailProcedure:          true,
		// Browsers need it to subscribe.
		parleyv1connect.PushServiceGetVapidPublicKeyProcedure: true,
	},
	Prefixes: []string{
		"/" + health.ServiceName + "/",
		"/grpc.reflection.v1.ServerReflection/",
		"/grpc.reflection.v1alpha.ServerReflection/",
		user.IdenticonPath,
		// Finished exports are fetched by signed URL alone.
		export.Path,
		health.LivePath,
		health.ReadyPath,
	},
	// Downloads also take signed URLs, checked by the media handler.
	Optional: []string{media.Path},
}

// New returns the HTTP handler that serves every Parley service over the
// Connect, gRPC and gRPC-Web protocols, plus gRPC health and reflection.
func New(d Deps) (http.Handler, error) {
	if d.MaxRequestBytes <= 0 {
		d.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if d.RequestBodyTimeout <= 0 {
		d.RequestBodyTimeout = DefaultRequestBodyTimeout
	}
	if d.Drain == nil {
		d.Drain = context.Background()
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Auth.Now == nil {
		d.Auth.Now = d.Now
	}
	if d.Auth.SessionEnds == nil {
		// A session that ends ends its live streams, on every instance,
		// and its devices' push subscriptions.
		var ends push.SessionEnds
		if d.Live != nil {
			ends = append(ends, d.Live)
		}
		if d.Push != nil {
			ends = append(ends, d.Push)
		}
		if len(ends) > 0 {
			d.Auth.SessionEnds = ends
		}
	}
	var events chat.Events = d.Live
	if d.Push != nil {
		// New messages and reactions queue pushes as they are announced.
		events = d.Push.Events(events)
	}
	users, chats := domain(d, events)
	chats.LimitSends(d.Sends)
	authn, err := auth.New(d.Log, d.Redis, users, d.Auth)
	if err != nil {
		return nil, err
	}
	var interceptors []connect.Interceptor
	if d.Telemetry != nil {
		// First, so that the RPC's span covers the others, and the
		// request's log line (reqlog) carries its trace id.
		otel, err := d.Telemetry.Interceptor()
		if err != nil {
			return nil, err
		}
		interceptors = append(interceptors, otel)
	}
	opts := []connect.HandlerOption{
		connect.WithInterceptors(append(interceptors,
			reqlog.Interceptor{},
			drainInterceptor{drain: d.Drain},
			validate.NewInterceptor(),
		)...),
		connect.WithReadMaxBytes(int(d.MaxRequestBytes)),
		// Compressing small messages costs more CPU than it saves.
		connect.WithCompressMinBytes(1024),
		connect.WithRecover(func(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
			// Recovered in the handler's goroutine: the stack is the
			// panic's.
			d.Log.ErrorContext(ctx, "handler panic", "procedure", spec.Procedure, "panic", p, "stack", string(debug.Stack()))
			return connect.NewError(connect.CodeInternal, errInternal)
		}),
	}

	mux := http.NewServeMux()
	mux.Handle(parleyv1connect.NewServerServiceHandler(
		info.NewService(d.Version, d.MaxRequestBytes), opts...))
	mux.Handle(parleyv1connect.NewAuthServiceHandler(authn, opts...))
	sender := d.Mail
	if sender == nil {
		sender = mail.NewLog(d.Log, "")
	}
	accounts, err := auth.NewAccountService(authn, users, sender)
	if err != nil {
		return nil, err
	}
	mux.Handle(parleyv1connect.NewAccountServiceHandler(accounts, opts...))
	mux.Handle(parleyv1connect.NewUserServiceHandler(users, opts...))
	mux.Handle(parleyv1connect.NewAvatarServiceHandler(users, opts...))
	// Blocks and privacy settings live with the users; chats consult
	// them through chat.Privacy, and live presence through chats.
	mux.Handle(parleyv1connect.NewPrivacyServiceHandler(users, opts...))
	exports, err := export.New(d.Log, d.Mongo, d.DocLocks, d.Media.Storage(), exportConfig(d))
	if err != nil {
		return nil, err
	}
	authn.DeleteAccountsWith(accountDeleter{users: users, chats: chats, files: d.Media, exports: exports, push: d.Push, live: d.Live})
	// After the request rules: a refused request takes nothing of the
	// budget.
	chatOpts := append(slices.Clone(opts), connect.WithInterceptors(chats.ChangeLimit()))
	mux.Handle(parleyv1connect.NewChatServiceHandler(chats, chatOpts...))
	if d.Push != nil {
		d.Push.Use(authn, chats, userNames{users})
		mux.Handle(parleyv1connect.NewPushServiceHandler(d.Push, opts...))
	}
	mcfg := d.MediaConfig
	mcfg.Keys, mcfg.RedisPrefix, mcfg.Now = d.Auth.Keys, d.Auth.RedisPrefix, d.Now
	files, err := media.New(d.Log, d.Media, chats, d.Redis, mcfg)
	if err != nil {
		return nil, err
	}
	mux.Handle(parleyv1connect.NewMediaServiceHandler(files, opts...))
	mux.Handle(media.Path, traced(d.Telemetry, media.Path+"{id}", files.Handler()))
	mux.Handle(parleyv1connect.NewMessageServiceHandler(chats, chatOpts...))
	livePath, liveHandler := parleyv1connect.NewLiveServiceHandler(live.NewService(d.Log, d.Live, chats, authn), opts...)
	mux.Handle(livePath, live.WithWriteDeadlines(liveHandler))
	mux.Handle(user.IdenticonPath, user.IdenticonHandler())
	mux.Handle(parleyv1connect.NewExportServiceHandler(exports, opts...))
	mux.Handle(export.Path, traced(d.Telemetry, export.Path+"{id}", exports.Handler()))

	healthPath, healthHandler := health.NewHandler(d.Health, opts...)
	mux.Handle(healthPath, healthHandler)
	mux.Handle(health.LivePath, health.LiveHandler())
	mux.Handle(health.ReadyPath, health.ReadyHandler(d.Health))
	reflector := grpcreflect.NewStaticReflector(append(Services, health.ServiceName)...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector, opts...))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector, opts...))

	h := authn.Middleware(public, mux)
	if d.WebDir != "" {
		h = withWebApp(d.WebDir, h)
	}
	if len(d.CORSOrigins) > 0 {
		h = withCORS(d.CORSOrigins, h)
	}
	pool, err := workers()
	if err != nil {
		return nil, err
	}
	// Streams (live events, health watches, reflection) and file
	// transfers keep their goroutine.
	h = reqlog.Middleware(d.Log, withBodyDeadline(d.RequestBodyTimeout, h))
	return withWorkers(pool, h, livePath, healthPath, "/grpc.reflection.", media.Path, export.Path), nil
}

// traced gives a plain HTTP endpoint a span (and http_server_* metrics)
// under route, and its log line the span's trace id.
func traced(t *telemetry.Telemetry, route string, h http.Handler) http.Handler {
	if t == nil {
		return h
	}
	return t.HTTPHandler(route, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqlog.SetSpan(r.Context())
		h.ServeHTTP(w, r)
	}))
}

// withWebApp serves a built single-page app from dir: its index.html at /
// and its files under /assets/, all public; everything else goes to api.
func withWebApp(dir string, api http.Handler) http.Handler {
	files := http.FileServer(http.Dir(dir))
	mux := http.NewServeMux()
	mux.Handle("/", api)
	mux.Handle("GET /{$}", files)
	mux.Handle("GET /assets/", files)
	return mux
}

// NewMediaJanitor returns the clean-up of uploads left unattached for
// longer than after, over the same stores as New.
func NewMediaJanitor(d Deps, after time.Duration) *media.Janitor {
	users, chats := domain(d, d.Live)
	return media.NewJanitor(d.Log, d.Media, referrers{chats, users}, after, d.Now)
}

// NewChatPurge returns the chat service over the same stores as New, for
// its purge of the chats left without readers (chat.Service.RunPurge);
// run it on every instance.
func NewChatPurge(d Deps) *chat.Service {
	_, chats := domain(d, d.Live)
	return chats
}

// NewExportWorker returns the worker that makes the data exports users
// request, over the same stores as New; run one on every instance.
func NewExportWorker(d Deps) *export.Worker {
	users, chats := domain(d, d.Live)
	src := export.Sources{Profiles: users, Chats: chats, Files: d.Media}
	return export.NewWorker(d.Log, d.Mongo, d.DocLocks, d.Media.Storage(), src, exportConfig(d))
}

// domain returns the user and chat services over d's stores, the chats
// announcing their events through events: New serves them, and the
// background workers (the media janitor, the export worker, the account
// deletion sweep) use them alike.
func domain(d Deps, events chat.Events) (*user.Service, *chat.Service) {
	users := user.New(d.Log, d.DB, d.Media, d.Now)
	chats := chat.New(d.Log, d.Mongo, d.Redis, d.DocLocks, d.Auth.RedisPrefix, users, users, events, d.Media, d.Now)
	users.GuardPairs(chats)
	return users, chats
}

func exportConfig(d Deps) export.Config {
	cfg := d.Export
	cfg.Keys = d.Auth.Keys
	if d.Now != nil {
		cfg.Now = d.Now
	}
	return cfg
}

// userNames names the senders of pushes.
type userNames struct{ users *user.Service }

func (n userNames) Name(ctx context.Context, userID int) (string, error) {
	me, err := n.users.Me(ctx, userID)
	if connect.CodeOf(err) == connect.CodeNotFound {
		return "", nil // a deleted account: the push names no sender
	}
	if err != nil {
		return "", err
	}
	return me.GetUser().GetUsername(), nil
}

// referrers finds the messages and avatars that use uploads.
type referrers struct {
	chats *chat.Service
	users *user.Service
}

func (r referrers) MessageWithMedia(ctx context.Context, chatID bson.ObjectID, senderID int, clientMessageID string, mediaID bson.ObjectID) (bson.ObjectID, bool, error) {
	return r.chats.MessageWithMedia(ctx, chatID, senderID, clientMessageID, mediaID)
}

func (r referrers) AvatarWithURL(ctx context.Context, url string) (int, bool, error) {
	return r.users.AvatarWithURL(ctx, url)
}

func (r referrers) GroupHasAvatar(ctx context.Context, chatID bson.ObjectID, url string) (bool, error) {
	return r.chats.GroupHasAvatar(ctx, chatID, url)
}

// withCORS lets browsers on the given origins call the API with any of the
// three protocols.
func withCORS(origins []string, h http.Handler) http.Handler {
	return cors.New(cors.Options{
		AllowedOrigins: origins,
		// PUT uploads and GET downloads of media, with byte ranges.
		AllowedMethods: append(connectcors.AllowedMethods(), http.MethodPut, http.MethodHead),
		AllowedHeaders: append(connectcors.AllowedHeaders(), "Authorization", "Range", "If-None-Match", "If-Range"),
		ExposedHeaders: append(connectcors.ExposedHeaders(), "Content-Range", "Content-Length", "Content-Disposition", "ETag", "Accept-Ranges"),
		MaxAge:         7200,
	}).Handler(h)
}

// NewHTTPServer returns an http.Server for handler that speaks HTTP/1.1 and
// HTTP/2, the latter over TLS when tlsConfig is set and as cleartext h2c
// otherwise. Its timeouts bound slow clients without cutting long streams:
// reading the headers (readHeaderTimeout, DefaultReadHeaderTimeout when
// zero) and idling are limited here, request bodies by New's handler, and
// never a whole request. Its connections carry the request log's
// per-connection record (reqlog.ConnContext).
func NewHTTPServer(addr string, handler http.Handler, tlsConfig *tls.Config, readHeaderTimeout time.Duration) *http.Server {
	if readHeaderTimeout <= 0 {
		readHeaderTimeout = DefaultReadHeaderTimeout
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	if tlsConfig != nil {
		protocols.SetHTTP2(true)
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	return &http.Server{
		Addr:              addr,
		Handler:           handler,
		TLSConfig:         tlsConfig,
		Protocols:         &protocols,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       reqlog.ConnContext,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 1000,
			SendPingTimeout:      30 * time.Second,
			PingTimeout:          15 * time.Second,
		},
	}
}
