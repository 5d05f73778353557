// Package server mounts every Parley service on one http.Handler: the
// Connect handlers generated from proto/parley/v1 (served over the Connect,
// gRPC and gRPC-Web protocols alike), gRPC health and reflection, CORS,
// request size limits, panic recovery and one log line per request.
//
// # Package map
//
// A request for parley.v1.XService/Method leads to proto/parley/v1/x.proto,
// to the generated interface in gen/parley/v1/parleyv1connect, and to its
// implementation in server/<domain>/.
//
//	server/             New(Deps) http.Handler, public procedures, stream draining;
//	                    account deletion over the domains (deletion.go);
//	                    short HTTP/2 requests run on a pool of workers whose
//	                    stacks have grown (workers.go)
//	server/info/        parley.v1.ServerService: version and limits
//	server/auth/        parley.v1.AuthService, sessions in Redis, the
//	                    authentication middleware, rate limits;
//	                    parley.v1.AccountService (account.go): password
//	                    change and reset codes, email verification tokens
//	                    and email change (accounttokens.go), the reset
//	                    mails it sends after answering, which shutdown
//	                    waits for (background.go); account deletion in
//	                    order, and its sweep (delete.go)
//	server/user/        parley.v1.UserService, AvatarService and
//	                    PrivacyService (blocks, privacy settings) on ent;
//	                    identicon avatars; the accounts auth signs in,
//	                    with their usernames normalised (username.go);
//	                    deleted accounts' tombstones, held-back usernames
//	                    (deletion.go)
//	server/chat/        parley.v1.ChatService and MessageService on MongoDB:
//	                    chats (whose participants are the membership),
//	                    positions, messages, typing; replies and mentions
//	                    (message.go, render.go), reactions, pins and
//	                    receipts, forwarding, search (search.go: folded
//	                    words), per-member settings and delete for me
//	                    (settings.go), invite links and group avatars
//	                    (invite.go); a deleted user's leaving, with the
//	                    hand-over of its groups (deletion.go); the purge
//	                    of chats left without readers (purge.go);
//	                    chat.Prepare upgrades older data and
//	                    creates the indexes at start-up; it announces every
//	                    change through chat.Events
//	server/live/        parley.v1.LiveService: per-user event logs in Redis
//	                    streams, one pub/sub connection per instance (per
//	                    node on a Redis Cluster: sharded pub/sub),
//	                    resumable streams, presence
//	server/media/       parley.v1.MediaService and the /media/ upload and
//	                    download endpoints; storage on disk or S3; the
//	                    Library that attaches uploads to messages and
//	                    avatars; clean-up of unattached uploads; a
//	                    deleted user's uploads (deletion.go)
//	server/export/      parley.v1.ExportService and the /exports/
//	                    download: data exports (zips of a user's profile,
//	                    chats, messages and own files) made by a worker on
//	                    every instance from leased jobs in MongoDB, stored
//	                    with the media, fetched by signed URL
//	server/push/        parley.v1.PushService: Web Push subscriptions (by
//	                    session) and settings in Redis; the chat events
//	                    wrapper that queues a job per new message or
//	                    reaction with a subscribed recipient; the queue
//	                    (a Redis stream and a sorted set) and its
//	                    workers, collapse windows, retries;
//	                    the Provider interface and its Web Push provider
//	                    (VAPID key: vapid.go)
//	server/admin/       the admin listener (-admin-addr): Prometheus
//	                    metrics, probes, pprof, expvar
//	server/telemetry/   the metrics registry and OpenTelemetry tracing:
//	                    otelconnect, otelpgx, redisotel, MongoDB spans from
//	                    the command monitor, store-call timings, trace ids
//	                    in log lines
//	server/health/      grpc.health.v1.Health from periodic store pings,
//	                    and the /livez and /readyz probes
//	server/reqlog/      one log line per request
//	server/rpcerr/      store errors -> Connect codes (and HTTP statuses), in
//	                    one place
//	server/mail/        outgoing mail: SMTP (-smtp-url, with go-mail) or,
//	                    without it, the log
//	server/keyring/     the signing key and retired keys that still verify;
//	                    MAC keys derived from them (refresh tokens, media
//	                    URLs); every token names its key
//	server/doclock/     per-document Redis locks around MongoDB updates, on
//	                    FerretDB 1.x only (doclock.Needed); nil elsewhere;
//	                    on every engine, the locks that serialize a user's
//	                    CreateUploads and a group's avatar changes
//	server/mongoindex/  start-up index creation that FerretDB accepts too
//	server/redisconn/   Redis or Redis Cluster from one URL; writes that
//	                    wait for a replica (WAIT); what differs between the
//	                    two (the publish command, walking every key)
//	server/sqldb/       PostgreSQL (or embedded SQLite) behind ent; migrations
//	server/embedded/    FerretDB and miniredis, the zero-setup stand-ins
//	server/app/         Config -> lock the data directory -> open stores ->
//	                    handler -> serve; used by main and by the test
//	                    harness
//	server/servertest/  in-process servers on real stores for tests, and
//	                    the helpers the tests share (accounts, tokens,
//	                    codes, chats, mail read back from Mailpit); its
//	                    proxy/ (a TCP proxy that cuts or darkens a store's
//	                    connections) imports nothing of the server, so
//	                    that any package's internal tests can use it
//	server/clustertest/ tests only: failovers of a real Redis Cluster under
//	                    sessions and live streams (make test-cluster)
//
// Beside the server, under cmd/: parley-load drives a running server
// through its public API (the workloads of BENCHMARKS.md);
// parley-benchreport turns its records (cmd/internal/loadrecord) into
// BENCHMARKS.md and its charts; scripts/bench (make bench) runs both.
// parley-soak (make soak) runs three instances behind nginx on a Redis
// Cluster and the document engine, injects faults under traffic, and
// checks that nothing was lost, stored twice or missed. deploy/ holds the nginx configuration and the systemd unit, which its
// tests run.
//
// # Import graph
//
// Imports point down this list only; nothing imports main or servertest
// (tests aside), and only app and servertest import embedded, which carries
// FerretDB's weight:
//
//	main
//	server/app, server/servertest
//	server
//	server/export, server/push
//	server/<domain> (live, chat, user, then media, auth, info), server/health,
//	server/admin
//	server/telemetry, server/reqlog, server/rpcerr, server/keyring,
//	server/mail,
//	server/doclock, server/mongoindex, server/sqldb, server/embedded
//	server/redisconn
//	gen/..., ent/...
//
// A domain package that needs another domain's answer (for example, "is
// this user in this chat?") declares a small interface for it, which
// server.New wires to the implementation (chat.Events is live.Hub;
// live.Chats is chat.Service; chat.Media and user.AvatarMedia are
// media.Library; media.Members and media.Referrers are chat.Service (with
// user.Service for avatars); chat.Privacy, blocks and
// privacy settings, is user.Service, which serves parley.v1.PrivacyService
// too; auth.SessionEnds is live.Hub and push.Service together
// (push.SessionEnds); live.Sessions is auth.Service; chat.Events is
// wrapped by push.Service.Events when pushes are on; push.Presence is
// live.Hub, push.Sessions auth.Service, push.Chats chat.Service and
// push.Names user.Service; export.Profiles is user.Service, export.Chats
// chat.Service and export.Files media.Library, which export calls as the
// user, so that an export renders everything as the API does;
// auth.AccountDeleter is user.Service, chat.Service, media.Library and
// export.Service together, in server/deletion.go). The imports between
// domains are of auth, for the caller's identity (auth.Caller), which
// every domain uses, of media by chat, for the media.Attachment its
// Library hands over, and of media by export, for the storage and the
// media.OwnFile it lists; push, above the domains, imports chat for the
// chat.Events it wraps and chat.PushChat; auth itself declares what it
// needs of accounts (auth.Accounts, and auth.AccountEmails for
// AccountService, both user.Service).
package server
