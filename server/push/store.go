package push

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/parley-chat/parley/server/redisconn"
)

// Subscriptions and settings live in Redis, beside the sessions they
// belong to, under one hash tag per user ({push:<id>}), so that a user's
// keys share a node of a Redis Cluster and users spread over the nodes:
//
//   - {push:<id>}:subs is a hash of the user's subscriptions by id, each a
//     JSON subRecord;
//   - {push:<id>}:settings is a hash of the user's settings ("previews":
//     "0" or "1"; absent: the default);
//   - {push:<id>}:win:<subscription>:<chat>[:m|:r] is the collapse
//     window of one device, chat and kind of push (messages, mentions,
//     reactions; see collapseScript).

// MaxSubscriptions bounds the subscriptions of one user.
const MaxSubscriptions = 20

// subRecord is one subscription as stored.
type subRecord struct {
	ID       string `json:"id"`
	Session  string `json:"session"`
	Endpoint string `json:"endpoint"`
	P256dh   string `json:"p256dh"`
	Auth     string `json:"auth"`
	Always   bool   `json:"always,omitempty"`
	Created  int64  `json:"created"` // ms
}

func (r *subRecord) subscription() Subscription {
	return Subscription{Endpoint: r.Endpoint, P256dh: r.P256dh, Auth: r.Auth}
}

// subscriptionID names the subscription of an endpoint: registering the
// endpoint again finds the same one.
func subscriptionID(endpoint string) string {
	h := sha256.Sum256([]byte(endpoint))
	return hex.EncodeToString(h[:12])
}

type store struct {
	rdb    redis.UniversalClient
	prefix string
	// subscribed is the queue's set of users with subscriptions, and
	// ready the key that says it is whole (see queue).
	subscribed, ready string
}

func (s *store) userTag(uid int) string { return s.prefix + "{push:" + strconv.Itoa(uid) + "}" }

func (s *store) subsKey(uid int) string     { return s.userTag(uid) + ":subs" }
func (s *store) settingsKey(uid int) string { return s.userTag(uid) + ":settings" }

// windowKey is the collapse window of a device's pushes of one kind in
// a chat: a mention's or a reaction's push never takes the place of
// another kind's.
func (s *store) windowKey(uid int, sub, chat, kind string) string {
	k := s.userTag(uid) + ":win:" + sub + ":" + chat
	if t := kindTag(kind); t != "" {
		k += ":" + t
	}
	return k
}

// kindTag marks what is a push kind's own, its window and its topic:
// "" for messages, "m" for mentions, "r" for reactions.
func kindTag(kind string) string {
	switch kind {
	case KindMention:
		return "m"
	case KindReaction:
		return "r"
	}
	return ""
}

// registerScript stores a subscription unless the user already has
// ARGV[3] others. It returns 1 when stored.
var registerScript = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HLEN', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
`)

// register stores the subscription; false when the user has too many.
func (s *store) register(ctx context.Context, uid int, r *subRecord) (bool, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return false, err
	}
	n, err := registerScript.Run(ctx, s.rdb, []string{s.subsKey(uid)}, r.ID, b, MaxSubscriptions).Int()
	if err != nil {
		return false, fmt.Errorf("register subscription: %w", err)
	}
	if n != 1 {
		return false, nil
	}
	// After the subscription, so that an unmark that raced it finds the
	// subscription or is followed by this.
	if err := s.rdb.SAdd(ctx, s.subscribed, uid).Err(); err != nil {
		return false, fmt.Errorf("register subscription: %w", err)
	}
	return true, nil
}

// unmark takes the user out of the set of subscribed users if it has no
// subscription left. A registration racing it (subscription stored, then
// the user added to the set) could store its subscription after the
// first count and add the user before the removal from the set: the
// count is made again after the removal, which puts the user back when
// it finds a subscription, so the set never lacks a user who has one.
// An error leaves the user in the set, which costs jobs, not pushes.
func (s *store) unmark(ctx context.Context, uid int) {
	n, err := s.rdb.HLen(ctx, s.subsKey(uid)).Result()
	if err != nil || n > 0 {
		return
	}
	if err := s.rdb.SRem(ctx, s.subscribed, uid).Err(); err != nil {
		return
	}
	if n, err := s.rdb.HLen(ctx, s.subsKey(uid)).Result(); err != nil || n > 0 {
		// Unknown or back: the user stays in the set.
		s.rdb.SAdd(ctx, s.subscribed, uid)
	}
}

// releaseScript deletes the lock KEYS[1] if it still holds ARGV[1].
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// subscribedWholeFor is how long the set of subscribed users is taken
// as whole once rebuilt: it is rebuilt that often, so that a user a
// failed write left out of it (a registration whose SADD failed, a
// failover that lost it) gets its pushes again within that time.
const subscribedWholeFor = time.Hour

// rebuildSubscribed fills the set of subscribed users from the
// subscriptions themselves when the set is not known to be whole (its
// ready key is absent: Redis lost it, the set is new, or its time is up),
// and then marks it whole. Until then no job is skipped. Registrations
// and removals meanwhile keep the set as they always do, so it is whole
// when marked. One worker of all instances rebuilds it at a time.
func (s *store) rebuildSubscribed(ctx context.Context) error {
	n, err := s.rdb.Exists(ctx, s.ready).Result()
	if err != nil || n == 1 {
		return err
	}
	lock, token := s.ready+":rebuilding", newID()
	if ok, err := s.rdb.SetNX(ctx, lock, token, 10*time.Minute).Result(); err != nil || !ok {
		return err
	}
	// Let go only if still held: a rebuild past the lock's time finds
	// another's lock.
	defer releaseScript.Run(context.WithoutCancel(ctx), s.rdb, []string{lock}, token)
	pattern := s.prefix + "{push:*}:subs"
	err = redisconn.ForEachPrimary(ctx, s.rdb, func(ctx context.Context, c *redis.Client) error {
		// Added a batch at a time, whether or not a hash still holds a
		// subscription: the set may hold more, never fewer.
		var batch []any
		add := func() error {
			if len(batch) == 0 {
				return nil
			}
			err := s.rdb.SAdd(ctx, s.subscribed, batch...).Err()
			batch = batch[:0]
			return err
		}
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			key := iter.Val()
			rest, ok := strings.CutPrefix(key, s.prefix+"{push:")
			if !ok {
				continue
			}
			id, ok := strings.CutSuffix(rest, "}:subs")
			if !ok {
				continue
			}
			uid, err := strconv.Atoi(id)
			if err != nil {
				continue
			}
			if batch = append(batch, uid); len(batch) == 1000 {
				if err := add(); err != nil {
					return err
				}
			}
		}
		if err := iter.Err(); err != nil {
			return err
		}
		return add()
	})
	if err != nil {
		return fmt.Errorf("rebuild the set of subscribed users: %w", err)
	}
	return s.rdb.Set(ctx, s.ready, 1, subscribedWholeFor).Err()
}

// list returns the user's subscriptions, oldest first.
func (s *store) list(ctx context.Context, uid int) ([]*subRecord, error) {
	m, err := s.rdb.HGetAll(ctx, s.subsKey(uid)).Result()
	if err != nil {
		return nil, fmt.Errorf("list subscriptions: %w", err)
	}
	return parseSubs(m), nil
}

func parseSubs(m map[string]string) []*subRecord {
	out := make([]*subRecord, 0, len(m))
	for _, v := range m {
		var r subRecord
		if json.Unmarshal([]byte(v), &r) == nil {
			out = append(out, &r)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Created != out[j].Created {
			return out[i].Created < out[j].Created
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// get returns one subscription, nil when there is none.
func (s *store) get(ctx context.Context, uid int, id string) (*subRecord, error) {
	v, err := s.rdb.HGet(ctx, s.subsKey(uid), id).Result()
	if err == redis.Nil {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get subscription: %w", err)
	}
	var r subRecord
	if err := json.Unmarshal([]byte(v), &r); err != nil {
		return nil, fmt.Errorf("get subscription: %w", err)
	}
	return &r, nil
}

// remove deletes subscriptions, whatever session they belong to (the
// user unregistered them); it returns how many there were.
func (s *store) remove(ctx context.Context, uid int, ids ...string) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	n, err := s.rdb.HDel(ctx, s.subsKey(uid), ids...).Result()
	if err != nil {
		return 0, fmt.Errorf("remove subscriptions: %w", err)
	}
	s.unmark(ctx, uid)
	return n, nil
}

// removeIfScript deletes from the hash KEYS[1] each subscription ARGV[i]
// whose record still names the session ARGV[i+1]; a record stored again
// meanwhile, by another session (the same device registered anew), stays.
// It returns how many it deleted.
var removeIfScript = redis.NewScript(`
local n = 0
for i = 1, #ARGV, 2 do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    local ok, r = pcall(cjson.decode, v)
    if ok and type(r) == 'table' and r.session == ARGV[i+1] then
      n = n + redis.call('HDEL', KEYS[1], ARGV[i])
    end
  end
end
return n
`)

// removeOf deletes the subscriptions if they still belong to the
// sessions they were read with (a caller found those sessions ended).
func (s *store) removeOf(ctx context.Context, uid int, subs ...*subRecord) error {
	if len(subs) == 0 {
		return nil
	}
	args := make([]any, 0, 2*len(subs))
	for _, r := range subs {
		args = append(args, r.ID, r.Session)
	}
	if err := removeIfScript.Run(ctx, s.rdb, []string{s.subsKey(uid)}, args...).Err(); err != nil {
		return fmt.Errorf("remove subscriptions: %w", err)
	}
	s.unmark(ctx, uid)
	return nil
}

// removeSessionScript deletes from the hash KEYS[1] the subscriptions of
// the session ARGV[1], in one step: one the same device registered again
// for another session stays.
var removeSessionScript = redis.NewScript(`
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  local ok, r = pcall(cjson.decode, all[i+1])
  if ok and type(r) == 'table' and r.session == ARGV[1] then
    n = n + redis.call('HDEL', KEYS[1], all[i])
  end
end
return n
`)

// removeSession deletes the subscriptions of the user's session.
func (s *store) removeSession(ctx context.Context, uid int, session string) error {
	if err := removeSessionScript.Run(ctx, s.rdb, []string{s.subsKey(uid)}, session).Err(); err != nil {
		return fmt.Errorf("remove the subscriptions of a session: %w", err)
	}
	s.unmark(ctx, uid)
	return nil
}

// settings are a user's push settings.
type settings struct {
	previews bool
}

func parseSettings(m map[string]string) settings {
	return settings{previews: m["previews"] != "0"}
}

func (s *store) settings(ctx context.Context, uid int) (settings, error) {
	m, err := s.rdb.HGetAll(ctx, s.settingsKey(uid)).Result()
	if err != nil {
		return settings{}, fmt.Errorf("push settings: %w", err)
	}
	return parseSettings(m), nil
}

func (s *store) setPreviews(ctx context.Context, uid int, on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	if err := s.rdb.HSet(ctx, s.settingsKey(uid), "previews", v).Err(); err != nil {
		return fmt.Errorf("push settings: %w", err)
	}
	return nil
}

// recipient is what the worker reads of one user at once.
type recipient struct {
	subs     []*subRecord
	settings settings
}

// recipients reads the users' subscriptions and settings in one round
// trip.
func (s *store) recipients(ctx context.Context, uids []int) (map[int]*recipient, error) {
	subs := make([]*redis.MapStringStringCmd, len(uids))
	sets := make([]*redis.MapStringStringCmd, len(uids))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, u := range uids {
			subs[i] = p.HGetAll(ctx, s.subsKey(u))
			sets[i] = p.HGetAll(ctx, s.settingsKey(u))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read recipients: %w", err)
	}
	out := make(map[int]*recipient, len(uids))
	for i, u := range uids {
		out[u] = &recipient{subs: parseSubs(subs[i].Val()), settings: parseSettings(sets[i].Val())}
	}
	return out, nil
}

// collapseScript decides whether a push for a device and chat goes now.
// KEYS[1] is the window (see store); ARGV: now (ms), the window (ms), the
// push, and how long a push kept waits for its flush at most (ms).
// Outside a window it opens one and returns 0: send now. Within one it
// keeps the push as the window's latest and returns when the window ends
// (ms), when the latest goes (flushScript).
var collapseScript = redis.NewScript(`
local untilv = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local now = tonumber(ARGV[1])
if untilv <= now then
  redis.call('HSET', KEYS[1], 'until', now + tonumber(ARGV[2]))
  redis.call('HDEL', KEYS[1], 'pending')
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]) + 60000)
  return 0
end
redis.call('HSET', KEYS[1], 'pending', ARGV[3])
redis.call('PEXPIRE', KEYS[1], untilv - now + tonumber(ARGV[4]))
return untilv
`)

// flushScript returns the latest push kept in a window that ended, and
// opens the next window, which it starts. The push stays kept until it
// was sent (clearScript), so that a flush cut short (the instance
// stopped) finds it again; ARGV[3] is how long the window's key lasts
// (ms), long enough for a stalled flush job to be taken over. It returns
// nil when no push waits.
var flushScript = redis.NewScript(`
local p = redis.call('HGET', KEYS[1], 'pending')
if not p then return false end
redis.call('HSET', KEYS[1], 'until', tonumber(ARGV[1]) + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return p
`)

// clearScript lets go of the push a window kept, ARGV[1], once it went:
// unless a later push replaced it meanwhile.
var clearScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'pending') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'pending')
end
return 0
`)

// collapse returns the zero time when the push goes now, or when the
// window it waits in ends.
func (s *store) collapse(ctx context.Context, uid int, sub, chat, kind string, now time.Time, window time.Duration, payload []byte) (time.Time, error) {
	// A push kept waits for its flush job as long as the push service
	// would keep it: the job may wait in a backlog, or for workers.
	keep := messageTTL
	if kind == KindReaction {
		keep = reactionTTL
	}
	until, err := collapseScript.Run(ctx, s.rdb, []string{s.windowKey(uid, sub, chat, kind)},
		now.UnixMilli(), window.Milliseconds(), payload, keep.Milliseconds()).Int64()
	if err != nil {
		return time.Time{}, fmt.Errorf("collapse: %w", err)
	}
	if until == 0 {
		return time.Time{}, nil
	}
	return time.UnixMilli(until), nil
}

// flush returns the push waiting at the end of a window, nil when none;
// it stays in the window until clear. keep is how long the window lasts
// at least, unless cleared.
func (s *store) flush(ctx context.Context, uid int, sub, chat, kind string, now time.Time, window, keep time.Duration) ([]byte, error) {
	p, err := flushScript.Run(ctx, s.rdb, []string{s.windowKey(uid, sub, chat, kind)},
		now.UnixMilli(), window.Milliseconds(), (2*window + keep).Milliseconds()).Text()
	if err == redis.Nil {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("flush: %w", err)
	}
	return []byte(p), nil
}

// clear takes the push flush returned out of its window, unless a later
// one replaced it.
func (s *store) clear(ctx context.Context, uid int, sub, chat, kind string, payload []byte) error {
	if err := clearScript.Run(ctx, s.rdb, []string{s.windowKey(uid, sub, chat, kind)}, payload).Err(); err != nil {
		return fmt.Errorf("clear a window: %w", err)
	}
	return nil
}

func timeMS(ms int64) time.Time { return time.UnixMilli(ms) }

// forget deletes the user's subscriptions and settings, for a deleted
// account. Collapse windows expire on their own.
func (s *store) forget(ctx context.Context, uid int) error {
	if err := s.rdb.Del(ctx, s.subsKey(uid), s.settingsKey(uid)).Err(); err != nil {
		return fmt.Errorf("forget push user: %w", err)
	}
	s.unmark(ctx, uid)
	return nil
}
