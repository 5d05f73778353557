// Package push sends push notifications to members who are offline: it
// serves parley.v1.PushService (devices register Web Push subscriptions,
// users choose whether pushes show previews), hears of new messages and
// reactions by wrapping chat.Events, and delivers the pushes from a queue
// in Redis that outlives the instance that filled it.
//
// A chat event becomes one job, queued in the same Redis round trip as the
// event's own (Events), unless none of its recipients has a subscription
// (a set of such users is kept beside the queue: see queue); a worker on
// any instance fans it out to the
// recipients' subscriptions, skipping users who have a live stream open
// (unless the subscription asked for pushes always), muted the chat, or
// whose subscription's session ended, and queues a job per device, each
// one request to a push service (Config.SendTimeout). Pushes to one
// device for one chat collapse: the first goes at once, and those that
// follow within the window (10 s) become one more push at the window's
// end with the latest.
// A push that fails for a while (429, 5xx, a network error) is tried
// again with exponential backoff; one the push service calls gone (404,
// 410) removes its subscription.
//
// Providers deliver the pushes: WebPush (RFC 8030, VAPID, RFC 8292, and
// payload encryption, RFC 8291) is the one there is; Provider is the
// interface another, such as FCM or APNs, would implement.
package push

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/chat"
)

// Defaults of Config.
const (
	DefaultWindow      = 10 * time.Second
	DefaultWorkers     = 4
	DefaultPoll        = time.Second
	DefaultClaimAfter  = 2 * time.Minute
	DefaultSendTimeout = 10 * time.Second
	DefaultRetryBase   = 2 * time.Second
	DefaultMaxBackoff  = 10 * time.Minute
	DefaultMaxAttempts = 10
)

// Config configures push notifications.
type Config struct {
	// Provider delivers the pushes; the VAPID public key clients
	// subscribe with is PublicKey.
	Provider Provider
	// PublicKey is the VAPID public key (uncompressed P-256,
	// base64url), which GetVapidPublicKey hands out.
	PublicKey string
	// RedisPrefix starts every Redis key.
	RedisPrefix string
	// InsecureEndpoints accepts http endpoints as well as https ones,
	// for tests with a local push service only (such a service also
	// needs a Provider whose client connects to it: see PublicClient).
	InsecureEndpoints bool
	// Window is how long pushes to one device for one chat collapse
	// into one more; DefaultWindow when zero.
	Window time.Duration
	// Workers is how many workers Run starts; DefaultWorkers when zero,
	// none when negative (the queue still fills, for other instances).
	Workers int
	// Poll is how often a worker looks for jobs whose time came (retries,
	// the ends of windows) when no job comes; DefaultPoll when zero.
	Poll time.Duration
	// ClaimAfter is how long a job may stay with a worker that does not
	// finish it (its instance died) before another takes it over;
	// DefaultClaimAfter when zero.
	ClaimAfter time.Duration
	// SendTimeout bounds one request to a push service (one that takes
	// longer is tried again later); DefaultSendTimeout when zero, and at
	// most half ClaimAfter, so that a job is not taken over while it
	// runs.
	SendTimeout time.Duration
	// RetryBase is the wait before the first retry, doubled for each
	// next one up to MaxBackoff; MaxAttempts bounds the tries of one
	// push. Defaults when zero.
	RetryBase, MaxBackoff time.Duration
	MaxAttempts           int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.Window <= 0 {
		c.Window = DefaultWindow
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.Poll <= 0 {
		c.Poll = DefaultPoll
	}
	if c.ClaimAfter <= 0 {
		c.ClaimAfter = DefaultClaimAfter
	}
	if c.SendTimeout <= 0 {
		c.SendTimeout = DefaultSendTimeout
	}
	c.SendTimeout = min(c.SendTimeout, c.ClaimAfter/2)
	if c.RetryBase <= 0 {
		c.RetryBase = DefaultRetryBase
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Sessions tells whether sessions are still open (auth.Service).
type Sessions interface {
	SessionsOpen(ctx context.Context, ids []auth.Identity) ([]bool, error)
}

// Presence tells whether users have a live stream open on any instance
// (live.Hub).
type Presence interface {
	Online(ctx context.Context, userIDs []int) ([]bool, error)
}

// Chats describes chats and messages for pushes (chat.Service).
type Chats interface {
	PushChat(ctx context.Context, chatID string, users []int) (chat.PushChat, bool, error)
	// MessageSender returns who sent the chat's message; ok is false
	// when there is no such message, or it was deleted.
	MessageSender(ctx context.Context, chatID, messageID string) (int, bool, error)
}

// Names gives the name a push shows for a user (its username); "" when
// the user is gone.
type Names interface {
	Name(ctx context.Context, userID int) (string, error)
}

// Service serves parley.v1.PushService and runs the delivery workers.
type Service struct {
	log      *slog.Logger
	cfg      Config
	store    *store
	queue    *queue
	presence Presence
	names    Names
	sessions Sessions
	chats    Chats
	instance string
}

// New returns the push service. It needs what Use gives it before it
// serves or runs.
func New(log *slog.Logger, rdb redis.UniversalClient, presence Presence, cfg Config) (*Service, error) {
	if cfg.Provider == nil {
		return nil, errors.New("push: no provider")
	}
	cfg.setDefaults()
	b := make([]byte, 6)
	rand.Read(b)
	q := newQueue(rdb, cfg.RedisPrefix)
	return &Service{
		log:      log,
		cfg:      cfg,
		store:    &store{rdb: rdb, prefix: cfg.RedisPrefix, subscribed: q.subscribed, ready: q.ready},
		queue:    q,
		presence: presence,
		instance: hex.EncodeToString(b),
	}, nil
}

// Use gives the service what is built after it: the sessions (the auth
// service, which is told of sessions' ends through SessionEnded), the
// chats (whose events Events wraps) and the users' names.
func (s *Service) Use(sessions Sessions, chats Chats, names Names) {
	s.sessions, s.chats, s.names = sessions, chats, names
}

// SessionEnded removes the subscriptions of a session that ended (it
// serves auth.SessionEnds). A subscription it misses is removed when a
// push finds its session gone.
func (s *Service) SessionEnded(ctx context.Context, userID int, sessionID string) {
	if err := s.store.removeSession(ctx, userID, sessionID); err != nil {
		s.log.WarnContext(ctx, "push: remove the subscriptions of an ended session", "user", userID, "err", err)
	}
}

var _ auth.SessionEnds = (*Service)(nil)

// ForgetUser deletes a deleted account's subscriptions (its sessions'
// ends took them already, unless a notice was lost) and its settings.
func (s *Service) ForgetUser(ctx context.Context, userID int) error {
	return s.store.forget(ctx, userID)
}

// SessionEnds tells every one of ends of a session's end.
type SessionEnds []auth.SessionEnds

// SessionEnded tells each of ends.
func (f SessionEnds) SessionEnded(ctx context.Context, userID int, sessionID string) {
	for _, e := range f {
		e.SessionEnded(ctx, userID, sessionID)
	}
}

// backoff is the wait before try attempt+1 (attempt counts from 0).
func (s *Service) backoff(attempt int) time.Duration {
	d := s.cfg.RetryBase
	for range attempt {
		d *= 2
		if d >= s.cfg.MaxBackoff {
			return s.cfg.MaxBackoff
		}
	}
	return d
}

func newID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}
