package live

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

// Presence lives in Redis, so that every instance answers alike and none
// has to be told when another dies. Users are spread over presenceBuckets
// buckets (by id); b is the user's:
//
//   - {p:<b>}:presence:<id> is a sorted set of the instances where the user
//     has a stream open, each scored with the time (ms) at which it stops
//     counting unless that instance renews it;
//   - {p:<b>}:online is a sorted set of the bucket's users online anywhere,
//     scored the same way, which is how an instance finds users whose
//     instance died and announces them offline;
//   - {p:<b>}:lastseen:<id> holds when the user was last online (ms).
//
// The scripts below touch a user's keys and the bucket's online set
// together: a bucket's keys share a hash tag, so each script runs on one
// node of a Redis Cluster, and the buckets spread presence over the nodes.

// joinScript marks the user online on an instance. It returns 1 when the
// user was offline everywhere before.
var joinScript = redis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
if before == 0 then return 1 end
return 0
`)

// leaveScript takes an instance's streams of the user away. It returns 1
// when that took the user offline everywhere, having recorded the time
// (a user already offline, whose presence expired or was forgotten, has
// its last-seen time left as it is).
var leaveScript = redis.NewScript(`
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
if redis.call('ZREM', KEYS[2], ARGV[3]) == 0 then return 0 end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[4])
return 1
`)

// expireScript takes offline a user whose instances all stopped renewing
// it. It returns the last time the user was seen (ms), or 0 when the user
// is still online or another instance already took it offline.
var expireScript = redis.NewScript(`
local exp = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not exp or tonumber(exp) > tonumber(ARGV[1]) then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local left = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #left > 0 then
  redis.call('ZADD', KEYS[2], left[2], ARGV[2])
  return 0
end
local seen = tonumber(exp) - tonumber(ARGV[3])
redis.call('SET', KEYS[3], seen, 'PX', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[2])
return seen
`)

// lastSeenTTL is how long the last-seen time of a user is kept.
const lastSeenTTL = 365 * 24 * time.Hour

// presenceBuckets is how many buckets users' presence is spread over.
const presenceBuckets = 64

func bucketOf(uid int) int { return uid % presenceBuckets }

func (h *Hub) bucketTag(b int) string { return h.cfg.Prefix + "{p:" + strconv.Itoa(b) + "}" }

func (h *Hub) presenceKey(uid int) string {
	return h.bucketTag(bucketOf(uid)) + ":presence:" + strconv.Itoa(uid)
}

func (h *Hub) lastSeenKey(uid int) string {
	return h.bucketTag(bucketOf(uid)) + ":lastseen:" + strconv.Itoa(uid)
}

// onlineKey is the online set of the bucket b.
func (h *Hub) onlineKey(b int) string { return h.bucketTag(b) + ":online" }

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// join marks the user online here; online tells it was offline before.
func (h *Hub) join(ctx context.Context, uid int) (online bool, err error) {
	now := h.cfg.Now()
	n, err := joinScript.Run(ctx, h.rdb,
		[]string{h.presenceKey(uid), h.onlineKey(bucketOf(uid))},
		h.instance, ms(now.Add(h.cfg.presenceTTL())), ms(now), uid).Int()
	return n == 1, err
}

// leave takes the user's streams here away; offline tells the user has
// none left anywhere.
func (h *Hub) leave(ctx context.Context, uid int) (offline bool, at time.Time, err error) {
	now := h.cfg.Now()
	n, err := leaveScript.Run(ctx, h.rdb,
		[]string{h.presenceKey(uid), h.onlineKey(bucketOf(uid)), h.lastSeenKey(uid)},
		h.instance, ms(now), uid, lastSeenTTL.Milliseconds()).Int()
	return n == 1, now, err
}

// settle brings the user's presence in Redis to what this instance has:
// here while the user has a stream here, gone once it has none; and when
// that takes the user online or offline everywhere, it announces it
// (again: announces online whenever the user is here, as rejoin does).
// Subscribe calls it for a user's first stream here and after its last.
// Those calls may run in either order (a stream closing as another
// opens), so each sets presence from the streams as they are when it
// runs, one call at a time for a user, and announces before the next
// runs: a user's stream that opens waits for the announcement that its
// previous one closed.
func (h *Hub) settle(ctx context.Context, uid int, again bool) error {
	unlock := h.presLocks.lock(uid)
	defer unlock()
	online, changed, at, err := h.setPresence(ctx, uid)
	if err != nil || !(changed || again && online) {
		return err
	}
	h.mu.Lock()
	announce := h.announce
	h.mu.Unlock()
	if announce != nil {
		announce(ctx, uid, online, at)
	}
	return nil
}

// setPresence is settle's change in Redis; changed tells that it took the
// user online or offline everywhere. It holds presMu shared: a renewal,
// which holds it alone, cannot renew the user between its reading that
// the user is here and its renewal while this takes the user away.
func (h *Hub) setPresence(ctx context.Context, uid int) (online, changed bool, at time.Time, err error) {
	h.presMu.RLock()
	defer h.presMu.RUnlock()
	h.mu.Lock()
	_, online = h.users[uid]
	if !online {
		delete(h.joined, uid)
	}
	h.mu.Unlock()
	if h.hooks.settling != nil {
		h.hooks.settling(uid, online)
	}
	if !online {
		changed, at, err = h.leave(ctx, uid)
		return false, changed, at, err
	}
	if changed, err = h.join(ctx, uid); err != nil {
		return true, false, time.Time{}, err
	}
	h.mu.Lock()
	h.joined[uid] = true
	h.mu.Unlock()
	return true, changed, h.cfg.Now(), nil
}

// rejoin sets the presence of the users with a stream here whose presence
// is not set: their settle failed (or is running), or a renewal found it
// gone. It announces them online: their contacts may not have heard it
// (a join that Redis made but whose answer was lost), or heard that they
// went offline (from another instance's expiry). It gives up for this
// round after a heartbeat, and on a single Redis at the first failure.
func (h *Hub) rejoin(ctx context.Context) error {
	h.mu.Lock()
	var users []int
	for uid := range h.users {
		if !h.joined[uid] {
			users = append(users, uid)
		}
	}
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Heartbeat)
	defer cancel()
	var first error
	for _, uid := range users {
		err := h.settle(ctx, uid, true)
		if err != nil && first == nil {
			first = err
		}
		// On a cluster, the other users may be on nodes that answer.
		if err != nil && (!h.sharded() || ctx.Err() != nil) {
			break
		}
	}
	return first
}

// renew keeps the users whose presence this instance set online, and the
// leases of all its streams (see leases.go) from lapsing, in one round
// trip. It holds presMu alone from its reading which users to renew to
// their renewal, so that no settle takes a user away meanwhile, which the
// renewal would then bring back online. It only renews presence Redis
// has: a user's that is gone is left to rejoin.
func (h *Hub) renew(ctx context.Context) error {
	h.presMu.Lock()
	defer h.presMu.Unlock()
	type renewal struct {
		joined bool
		leases []string
		subs   []*subscriber // leases[i] is subs[i]'s
		here   *redis.FloatCmd
		held   *redis.FloatSliceCmd
	}
	h.mu.Lock()
	users := make(map[int]*renewal, len(h.users))
	for uid, subs := range h.users {
		r := &renewal{joined: h.joined[uid], leases: make([]string, 0, len(subs))}
		for sub := range subs {
			r.leases = append(r.leases, sub.lease)
			r.subs = append(r.subs, sub)
		}
		users[uid] = r
	}
	h.mu.Unlock()
	if h.hooks.beforeRenew != nil {
		h.hooks.beforeRenew()
	}
	if len(users) == 0 {
		return nil
	}
	exp := h.cfg.Now().Add(h.cfg.presenceTTL())
	score := float64(exp.UnixMilli())
	cmds, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for uid, r := range users {
			if r.joined {
				// XX: presence that lapsed was announced offline; the
				// user is to come back announced (and so is one Redis
				// lost). While the user is in the presence set, it is
				// in the online set too (see the scripts). (Should
				// another instance take it out between the two, the
				// next renewal finds it gone.)
				r.here = p.ZScore(ctx, h.presenceKey(uid), h.instance)
				p.ZAddXX(ctx, h.presenceKey(uid), redis.Z{Score: score, Member: h.instance})
				p.PExpireAt(ctx, h.presenceKey(uid), exp)
				p.ZAddXX(ctx, h.onlineKey(bucketOf(uid)), redis.Z{Score: score, Member: uid})
			}
			if len(r.leases) > 0 {
				zs := make([]redis.Z, len(r.leases))
				for i, l := range r.leases {
					zs[i] = redis.Z{Score: score, Member: l}
				}
				// XX: a lease released since it was collected must not
				// come back and hold a slot until it lapses. Those
				// found missing (lapsed while Redis was out of reach,
				// or lost by it) are put back below.
				r.held = p.ZMScore(ctx, h.leasesKey(uid), r.leases...)
				p.ZAddXX(ctx, h.leasesKey(uid), zs...)
				p.PExpireAt(ctx, h.leasesKey(uid), exp)
			}
		}
		return nil
	})
	if errors.Is(err, redis.Nil) {
		// A user's presence not found: that is an answer.
		err = nil
		for _, c := range cmds {
			if c.Err() != nil && !errors.Is(c.Err(), redis.Nil) {
				err = c.Err()
				break
			}
		}
	}
	missing := map[int][]*subscriber{}
	h.mu.Lock()
	for uid, r := range users {
		if r.here != nil && errors.Is(r.here.Err(), redis.Nil) {
			delete(h.joined, uid)
		}
		if r.held == nil || r.held.Err() != nil {
			continue
		}
		for i, at := range r.held.Val() {
			// No lease has score 0 (a time in ms): 0 is one missing.
			if _, open := h.users[uid][r.subs[i]]; at == 0 && open {
				missing[uid] = append(missing[uid], r.subs[i])
			}
		}
	}
	h.mu.Unlock()
	if err != nil {
		return err
	}
	return h.restoreLeases(ctx, missing, score, exp)
}

// restoreLeases puts back the leases of open streams that Redis no longer
// holds, so that the streams count towards their limits again (else a
// user could open as many again after an outage). A stream that closes
// meanwhile may have its lease released before it is put back: it is
// taken out again after.
func (h *Hub) restoreLeases(ctx context.Context, missing map[int][]*subscriber, score float64, exp time.Time) error {
	if len(missing) == 0 {
		return nil
	}
	if _, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for uid, subs := range missing {
			zs := make([]redis.Z, len(subs))
			for i, sub := range subs {
				zs[i] = redis.Z{Score: score, Member: sub.lease}
			}
			p.ZAddNX(ctx, h.leasesKey(uid), zs...)
			p.PExpireAt(ctx, h.leasesKey(uid), exp)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("restore stream leases: %w", err)
	}
	h.mu.Lock()
	closed := map[int][]any{}
	for uid, subs := range missing {
		for _, sub := range subs {
			if _, open := h.users[uid][sub]; !open {
				closed[uid] = append(closed[uid], sub.lease)
			}
		}
	}
	h.mu.Unlock()
	if len(closed) == 0 {
		return nil
	}
	if _, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for uid, leases := range closed {
			p.ZRem(ctx, h.leasesKey(uid), leases...)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("release restored stream leases: %w", err)
	}
	return nil
}

// userLocks are mutexes by user, each made when first wanted and dropped
// when nobody holds or waits for it.
type userLocks struct {
	mu sync.Mutex
	m  map[int]*userLock
}

type userLock struct {
	sync.Mutex
	refs int // holders and waiters, under userLocks.mu
}

// lock locks the user's mutex and returns its unlock.
func (l *userLocks) lock(uid int) (unlock func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[int]*userLock{}
	}
	u := l.m[uid]
	if u == nil {
		u = &userLock{}
		l.m[uid] = u
	}
	u.refs++
	l.mu.Unlock()
	u.Lock()
	return func() {
		u.Unlock()
		l.mu.Lock()
		if u.refs--; u.refs == 0 {
			delete(l.m, uid)
		}
		l.mu.Unlock()
	}
}

// expirePresence announces offline the users no instance renews any more
// (their instance died). Every instance runs it; the script lets one
// of them announce each user.
func (h *Hub) expirePresence(ctx context.Context) error {
	now := h.cfg.Now()
	lapsed := make([]*redis.StringSliceCmd, presenceBuckets)
	_, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for b := range lapsed {
			lapsed[b] = p.ZRangeByScore(ctx, h.onlineKey(b), &redis.ZRangeBy{
				Min: "-inf", Max: ms(now), Count: 500,
			})
		}
		return nil
	})
	// On a cluster with a node down, the buckets of the other nodes are
	// still looked after.
	for _, cmd := range lapsed {
		if cmd.Err() != nil {
			continue
		}
		for _, s := range cmd.Val() {
			uid, err := strconv.Atoi(s)
			if err != nil {
				continue
			}
			if err := h.expireUser(ctx, uid, now); err != nil {
				return err
			}
		}
	}
	return err
}

// expireUser takes the user offline, and announces it, if its presence
// lapsed everywhere. It holds the user's lock, so that its announcement
// does not overtake one of a settle on this instance that follows it.
func (h *Hub) expireUser(ctx context.Context, uid int, now time.Time) error {
	unlock := h.presLocks.lock(uid)
	defer unlock()
	seen, err := expireScript.Run(ctx, h.rdb,
		[]string{h.presenceKey(uid), h.onlineKey(bucketOf(uid)), h.lastSeenKey(uid)},
		ms(now), uid, h.cfg.presenceTTL().Milliseconds(), lastSeenTTL.Milliseconds()).Int64()
	if err != nil {
		return err
	}
	h.mu.Lock()
	announce := h.announce
	h.mu.Unlock()
	if seen > 0 && announce != nil {
		announce(ctx, uid, false, time.UnixMilli(seen))
	}
	return nil
}

// ForgetUser deletes what Redis holds of a deleted account's live
// delivery: its event log, its presence and last-seen time, and its
// streams' leases (its streams ended with its sessions).
func (h *Hub) ForgetUser(ctx context.Context, uid int) error {
	// Apart: a Redis Cluster takes keys of one slot per command. Out of
	// the online set first, so that a late leave (leaveScript) finds the
	// user offline already and records no last-seen time again.
	if err := h.rdb.Del(ctx, h.streamKey(uid), h.leasesKey(uid)).Err(); err != nil {
		return fmt.Errorf("live: forget user: %w", err)
	}
	if err := h.rdb.ZRem(ctx, h.onlineKey(bucketOf(uid)), uid).Err(); err != nil {
		return fmt.Errorf("live: forget user: %w", err)
	}
	if err := h.rdb.Del(ctx, h.presenceKey(uid), h.lastSeenKey(uid)).Err(); err != nil {
		return fmt.Errorf("live: forget user: %w", err)
	}
	return nil
}

// presence reads the users' presence.
func (h *Hub) presence(ctx context.Context, uids []int) ([]*parleyv1.Presence, error) {
	now := h.cfg.Now()
	counts := make([]*redis.IntCmd, len(uids))
	seen := make([]*redis.StringCmd, len(uids))
	_, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, uid := range uids {
			counts[i] = p.ZCount(ctx, h.presenceKey(uid), "("+ms(now), "+inf")
			seen[i] = p.Get(ctx, h.lastSeenKey(uid))
		}
		return nil
	})
	if err != nil && err != redis.Nil {
		return nil, err
	}
	out := make([]*parleyv1.Presence, len(uids))
	for i, uid := range uids {
		p := &parleyv1.Presence{UserId: int32(uid), Online: counts[i].Val() > 0}
		if p.Online {
			p.LastSeen = timestamppb.New(now)
		} else if v, err := seen[i].Int64(); err == nil {
			p.LastSeen = timestamppb.New(time.UnixMilli(v))
		}
		out[i] = p
	}
	return out, nil
}

func timestampOf(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
