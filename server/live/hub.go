package live

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/redisconn"
)

// Config tunes live delivery. The zero value of each field means its
// default.
type Config struct {
	// Prefix starts every Redis key and channel name.
	Prefix string
	// QueueSize is how many events a stream may have waiting to be
	// written before it is closed with RESOURCE_EXHAUSTED (default 256).
	QueueSize int
	// Heartbeat is how often idle streams get a heartbeat, and how often
	// this instance renews its users' presence (default 15s).
	Heartbeat time.Duration
	// WriteTimeout ends a stream whose client has not taken an event for
	// this long, give or take a quarter of it (default 30s; watch.go).
	WriteTimeout time.Duration
	// MaxEvents is about how many events each user's log keeps (default
	// 10,000); Retention is how long a log with no new events is kept
	// (default 7 days). Clients that resume from further back re-sync.
	MaxEvents int
	Retention time.Duration
	// MaxStreamsPerSession and MaxStreamsPerUser bound the streams open at
	// once, over all instances, in one session and for one user (default
	// DefaultMaxStreamsPerSession and DefaultMaxStreamsPerUser).
	MaxStreamsPerSession int
	MaxStreamsPerUser    int
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

func (c *Config) defaults() {
	if c.QueueSize <= 0 {
		c.QueueSize = 256
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 15 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 30 * time.Second
	}
	if c.MaxEvents <= 0 {
		c.MaxEvents = 10000
	}
	if c.Retention <= 0 {
		c.Retention = 7 * 24 * time.Hour
	}
	if c.MaxStreamsPerSession <= 0 {
		c.MaxStreamsPerSession = DefaultMaxStreamsPerSession
	}
	if c.MaxStreamsPerUser <= 0 {
		c.MaxStreamsPerUser = DefaultMaxStreamsPerUser
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// presenceTTL is how long a user stays online after its instance last
// renewed it: an instance that dies takes its users offline this late.
func (c *Config) presenceTTL() time.Duration { return 3 * c.Heartbeat }

// Hub is an instance's side of live delivery. It holds one Redis pub/sub
// connection for all the streams open on the instance (one per node on a
// Redis Cluster, see channels.go), subscribed to one channel per user with
// a stream here, and hands each published event to that user's streams
// without ever waiting for them.
type Hub struct {
	log      *slog.Logger
	rdb      redis.UniversalClient
	cfg      Config
	instance string
	subs     channels
	// publish is the command that publishes on a channel (PUBLISH, or
	// SPUBLISH on a cluster).
	publish string

	// subMu orders changes to the set of subscribed channels, so that the
	// SUBSCRIBE and UNSUBSCRIBE commands go out in the order of the
	// changes to users.
	subMu sync.Mutex
	mu    sync.Mutex
	users map[int]map[*subscriber]struct{}

	// announce, set by NewService under mu, tells a user's contacts that
	// it came online or went offline: when its first stream anywhere
	// opens, its last one closes, or its presence expires because the
	// instance that kept it online stopped renewing it.
	announce func(ctx context.Context, userID int, online bool, at time.Time)
	// joined are the users with a stream here whose presence this
	// instance set in Redis (see settle), under mu: those it renews. A
	// renewal that finds the user's presence gone from Redis (it lapsed
	// while this instance stalled, or Redis lost it) takes the user out,
	// for rejoin to set and announce again.
	joined map[int]bool
	// presMu and presLocks order this instance's changes to presence in
	// Redis: a renewal holds presMu alone, a settle holds it shared and
	// its user's lock, an expiry its user's lock (see settle and renew).
	presMu    sync.RWMutex
	presLocks userLocks
	// hooks are for tests.
	hooks struct {
		// beforeRenew runs in each renewal between its reading which
		// users to renew and their renewal.
		beforeRenew func()
		// settling runs in each settle between its reading whether the
		// user has a stream here and its change in Redis.
		settling func(uid int, here bool)
	}
	// sessions, set by NewService under mu, checks at each heartbeat that
	// the streams' sessions are still open.
	sessions Sessions
	// leases numbers this instance's stream leases.
	leases atomic.Uint64
	// writers are the streams' writers, for the write watch (watch.go).
	writersMu sync.Mutex
	writers   map[*watchedWriter]struct{}

	cancel context.CancelFunc
	done   sync.WaitGroup
}

// NewHub starts the instance's hub; Close stops it.
func NewHub(log *slog.Logger, rdb redis.UniversalClient, cfg Config) *Hub {
	cfg.defaults()
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	ctx, cancel := context.WithCancel(context.Background())
	h := &Hub{
		log:      log,
		rdb:      rdb,
		cfg:      cfg,
		instance: hex.EncodeToString(b),
		publish:  redisconn.Publish(rdb),
		users:    map[int]map[*subscriber]struct{}{},
		joined:   map[int]bool{},
		writers:  map[*watchedWriter]struct{}{},
		cancel:   cancel,
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		h.subs = newShardedChannels(ctx, h, cc)
	} else {
		h.subs = newSingleChannels(ctx, h, rdb)
	}
	h.done.Add(3)
	go h.everyHeartbeat(ctx, h.tick)
	go h.everyHeartbeat(ctx, h.expire)
	go h.watchWrites(ctx)
	return h
}

// sharded tells that the hub runs on a Redis Cluster.
func (h *Hub) sharded() bool { return redisconn.IsCluster(h.rdb) }

// Close stops the hub. Streams still open get nothing more.
func (h *Hub) Close() error {
	h.cancel()
	err := h.subs.close()
	h.done.Wait()
	return err
}

// Streams is how many streams are open on this instance.
func (h *Hub) Streams() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, subs := range h.users {
		n += len(subs)
	}
	return n
}

// add registers a stream of the caller, holding lease. first tells that
// it is the user's only stream on this instance.
func (h *Hub) add(ctx context.Context, id auth.Identity, lease string) (sub *subscriber, first bool) {
	userID := id.UserID
	sub = &subscriber{
		user:    userID,
		session: id.SessionID,
		expires: id.Expires,
		lease:   lease,
		limit:   h.cfg.QueueSize,
		wake:    make(chan struct{}, 1),
		ready:   make(chan struct{}),
	}
	h.subMu.Lock()
	defer h.subMu.Unlock()
	h.mu.Lock()
	subs := h.users[userID]
	if subs == nil {
		subs = map[*subscriber]struct{}{}
		h.users[userID] = subs
		first = true
	} else {
		// The channel is subscribed or about to be: if about to be, its
		// confirmation will make this stream catch up again.
		sub.confirm()
	}
	subs[sub] = struct{}{}
	h.mu.Unlock()
	if first {
		h.subs.subscribe(ctx, h.channel(userID))
	}
	return sub, first
}

// remove unregisters a stream. last tells that the user has no other
// stream on this instance.
func (h *Hub) remove(sub *subscriber) (last bool) {
	sub.close()
	h.subMu.Lock()
	defer h.subMu.Unlock()
	h.mu.Lock()
	subs := h.users[sub.user]
	delete(subs, sub)
	if len(subs) == 0 {
		delete(h.users, sub.user)
		last = true
	}
	h.mu.Unlock()
	if last {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h.subs.unsubscribe(ctx, h.channel(sub.user))
	}
	return last
}

// subscribed is told that a channel's subscription is active, the first
// time or again after a reconnection. Whatever was published while it
// was not is in the user's log: every stream of the user reads the log
// again from its last cursor.
func (h *Hub) subscribed(ch string) {
	uid, ok := h.userOfChannel(ch)
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.users[uid] {
		sub.confirm()
	}
}

// dispatch hands a published event to the user's streams on this
// instance. It never blocks: a stream whose queue is full is closed.
func (h *Hub) dispatch(ch, payload string) {
	uid, ok := h.userOfChannel(ch)
	if !ok {
		return
	}
	if sid, ok := strings.CutPrefix(payload, sessionEndedPrefix); ok {
		h.endSession(uid, sid)
		return
	}
	cursor, body, ok := splitPayload(payload)
	if !ok {
		h.log.Error("live: malformed message", "channel", ch)
		return
	}
	ev := &parleyv1.Event{}
	if err := proto.Unmarshal([]byte(body), ev); err != nil {
		h.log.Error("live: undecodable message", "channel", ch, "err", err)
		return
	}
	ev.Cursor = cursor
	e := logged{cursor: cursor, ev: ev}
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.users[uid] {
		sub.offer(e)
	}
}

// splitPayload parses "<cursor> <event>"; the cursor is empty for events
// that are not logged.
func splitPayload(p string) (cursor, body string, ok bool) {
	for i := 0; i < len(p) && i <= 41; i++ {
		if p[i] == ' ' {
			return p[:i], p[i+1:], true
		}
	}
	return "", "", false
}

// everyHeartbeat runs round at every heartbeat until ctx ends.
func (h *Hub) everyHeartbeat(ctx context.Context, round func(context.Context)) {
	defer h.done.Done()
	t := time.NewTicker(h.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		round(ctx)
	}
}

// tick sends heartbeats, keeps presence and the streams' leases up to
// date, and ends the streams whose token expired (by the hub's clock,
// which tests may move) or whose session ended without the hub hearing
// of it.
func (h *Hub) tick(ctx context.Context) {
	now := h.cfg.Now()
	h.mu.Lock()
	var sessions []auth.Identity
	seen := map[auth.Identity]bool{}
	for uid, subs := range h.users {
		for sub := range subs {
			if !sub.expires.IsZero() && !now.Before(sub.expires) {
				sub.end(errTokenExpired)
				continue
			}
			sub.heartbeat()
			if id := (auth.Identity{UserID: uid, SessionID: sub.session}); !seen[id] {
				seen[id] = true
				sessions = append(sessions, id)
			}
		}
	}
	check := h.sessions
	h.mu.Unlock()
	if err := h.renew(ctx); err != nil && ctx.Err() == nil {
		h.log.Warn("live: renew presence", "err", err)
	}
	if check != nil && len(sessions) > 0 {
		open, err := check.SessionsOpen(ctx, sessions)
		if err != nil && ctx.Err() == nil {
			h.log.Warn("live: check sessions", "err", err)
		}
		for i, ok := range open {
			if !ok {
				h.endSession(sessions[i].UserID, sessions[i].SessionID)
			}
		}
	}
}

// expire announces offline the users whose instances stopped renewing
// their presence (see expirePresence). It runs apart from tick: when an
// instance with many users dies, announcing them (a read of each one's
// contacts, an event each) takes long, and must not hold back this
// instance's heartbeats and renewals meanwhile.
//
// First it sets again, and announces, the presence of the users with a
// stream here whose presence is not set (see rejoin).
func (h *Hub) expire(ctx context.Context) {
	if err := h.rejoin(ctx); err != nil && ctx.Err() == nil {
		h.log.Warn("live: presence", "err", err)
	}
	if err := h.expirePresence(ctx); err != nil && ctx.Err() == nil {
		h.log.Warn("live: expire presence", "err", err)
	}
}

// sessionEndedPrefix starts the control message that ends a session's
// streams, published on its user's channel. Event payloads start with a
// cursor (digits) or a space; and having no space in its first 42 bytes,
// the message is dropped as malformed by instances that predate it.
const sessionEndedPrefix = "!session-ended:"

// SessionEnded ends the streams of the user's session on every instance:
// each instance with a stream of the user hears it on the user's channel.
// Pub/sub may lose it (a connection that breaks at that moment); streams
// also check their session at each heartbeat and whenever their
// subscription is renewed.
func (h *Hub) SessionEnded(ctx context.Context, userID int, sessionID string) {
	if err := h.rdb.Do(ctx, h.publish, h.channel(userID), sessionEndedPrefix+sessionID).Err(); err != nil {
		h.log.WarnContext(ctx, "live: announce session end; its streams end at their next heartbeat", "user", userID, "err", err)
	}
}

var _ auth.SessionEnds = (*Hub)(nil)

// endSession ends the session's streams on this instance.
func (h *Hub) endSession(userID int, sessionID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.users[userID] {
		if sub.session == sessionID {
			sub.end(errSessionEnded)
		}
	}
}

// subscriber is one open stream, as the hub sees it.
type subscriber struct {
	user    int
	session string
	// expires is when the stream's access token expires (zero: never).
	expires time.Time
	// lease holds the stream's slot (see leases.go).
	lease string
	// limit bounds the events waiting in pending.
	limit int
	// wake is signalled when an event is queued or a flag below is set.
	wake chan struct{}
	// ready is closed once the user's channel is subscribed.
	ready chan struct{}

	mu sync.Mutex
	// pending are the live events waiting to be written, oldest first.
	// It grows as events come (an idle stream holds none) and is handed
	// over whole by take.
	pending    []logged
	isReady    bool
	live       bool // events go into pending; else they are read from the log
	dirty      bool // the log may hold events this stream has not seen
	overflowed bool
	beat       bool
	closed     bool
	// renewed: the subscription was (re)confirmed, and messages may have
	// been missed before, a session's end among them.
	renewed bool
	// ended is why the stream must end now (its session ended, its token
	// expired).
	ended error
}

func (s *subscriber) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) confirm() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.isReady {
		s.isReady = true
		close(s.ready)
	}
	s.dirty, s.renewed = true, true
	s.signal()
}

func (s *subscriber) end(why error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended == nil {
		s.ended = why
	}
	s.signal()
}

func (s *subscriber) offer(e logged) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if s.overflowed {
		eventsDropped.Inc()
		return
	}
	if !s.live {
		// Being read from the log: logged events will be found there,
		// unlogged ones are of no use to a stream still catching up.
		if e.cursor != "" {
			s.dirty = true
		}
		return
	}
	if len(s.pending) >= s.limit {
		s.overflowed = true
		eventsDropped.Inc()
	} else {
		s.pending = append(s.pending, e)
	}
	s.signal()
}

func (s *subscriber) heartbeat() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.beat = true
	s.signal()
}

func (s *subscriber) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
}

// endedBy tells why the stream must end now, if it must.
func (s *subscriber) endedBy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}

// goLive switches the stream to taking events from pending, unless
// events came while it read the log (then it must read again).
func (s *subscriber) goLive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dirty {
		s.dirty = false
		return false
	}
	s.live = true
	return true
}

// signals are a stream's pending signals.
type signals struct {
	overflowed, dirty, renewed, beat bool
	ended                            error
}

// take returns the waiting events and the pending signals, and clears
// both. spare, emptied, becomes the next pending buffer, so that two
// buffers serve a busy stream; a big one is dropped instead, so that a
// burst does not stay in the memory of a stream gone idle.
func (s *subscriber) take(spare []logged) ([]logged, signals) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := signals{overflowed: s.overflowed, dirty: s.dirty, renewed: s.renewed, beat: s.beat, ended: s.ended}
	s.dirty, s.renewed, s.beat = false, false, false
	events := s.pending
	clear(spare)
	if cap(spare) > keptBuffer {
		spare = nil
	}
	s.pending = spare[:0]
	return events, f
}

// keptBuffer is the largest event buffer a stream keeps between bursts.
const keptBuffer = 16
