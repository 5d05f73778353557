package live

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

// Presence lives in Redis, so that every instance answers alike and none
// has to be told when another dies:
//
//   - {u:<id>}:presence is a sorted set of the instances where the user has
//     a stream open, each scored with the time (ms) at which it stops
//     counting unless that instance renews it;
//   - presence:online is a sorted set of the users online anywhere, scored
//     the same way, which is how an instance finds users whose instance
//     died and announces them offline;
//   - {u:<id>}:lastseen holds when the user was last online (ms).
//
// The scripts below touch keys of different users, so presence needs a
// single Redis (or the keys in one Cluster slot).

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
// when the user is now offline everywhere, having recorded the time.
var leaveScript = redis.NewScript(`
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[4])
return redis.call('ZREM', KEYS[2], ARGV[3])
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

func (h *Hub) presenceKey(uid int) string {
	return h.cfg.Prefix + "{u:" + strconv.Itoa(uid) + "}:presence"
}

func (h *Hub) lastSeenKey(uid int) string {
	return h.cfg.Prefix + "{u:" + strconv.Itoa(uid) + "}:lastseen"
}

func (h *Hub) onlineKey() string { return h.cfg.Prefix + "presence:online" }

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// join marks the user online here; online tells it was offline before.
func (h *Hub) join(ctx context.Context, uid int) (online bool, err error) {
	now := h.cfg.Now()
	n, err := joinScript.Run(ctx, h.rdb,
		[]string{h.presenceKey(uid), h.onlineKey()},
		h.instance, ms(now.Add(h.cfg.presenceTTL())), ms(now), uid).Int()
	return n == 1, err
}

// leave takes the user's streams here away; offline tells the user has
// none left anywhere.
func (h *Hub) leave(ctx context.Context, uid int) (offline bool, at time.Time, err error) {
	now := h.cfg.Now()
	n, err := leaveScript.Run(ctx, h.rdb,
		[]string{h.presenceKey(uid), h.onlineKey(), h.lastSeenKey(uid)},
		h.instance, ms(now), uid, lastSeenTTL.Milliseconds()).Int()
	return n == 1, now, err
}

// renewPresence keeps the users with streams here online, and their
// streams' leases (see leases.go) from lapsing, in one round trip.
func (h *Hub) renewPresence(ctx context.Context, users map[int][]string) error {
	if len(users) == 0 {
		return nil
	}
	exp := h.cfg.Now().Add(h.cfg.presenceTTL())
	score := float64(exp.UnixMilli())
	_, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for uid, leases := range users {
			p.ZAdd(ctx, h.presenceKey(uid), redis.Z{Score: score, Member: h.instance})
			p.PExpireAt(ctx, h.presenceKey(uid), exp)
			p.ZAdd(ctx, h.onlineKey(), redis.Z{Score: score, Member: uid})
			if len(leases) > 0 {
				zs := make([]redis.Z, len(leases))
				for i, l := range leases {
					zs[i] = redis.Z{Score: score, Member: l}
				}
				// XX: a lease released since it was collected must not
				// come back and hold a slot until it lapses.
				p.ZAddXX(ctx, h.leasesKey(uid), zs...)
				p.PExpireAt(ctx, h.leasesKey(uid), exp)
			}
		}
		return nil
	})
	return err
}

// expirePresence announces offline the users no instance renews any more
// (their instance died). Every instance runs it; the script lets one
// of them announce each user.
func (h *Hub) expirePresence(ctx context.Context) error {
	now := h.cfg.Now()
	uids, err := h.rdb.ZRangeByScore(ctx, h.onlineKey(), &redis.ZRangeBy{
		Min: "-inf", Max: ms(now), Count: 500,
	}).Result()
	if err != nil {
		return err
	}
	for _, s := range uids {
		uid, err := strconv.Atoi(s)
		if err != nil {
			continue
		}
		seen, err := expireScript.Run(ctx, h.rdb,
			[]string{h.presenceKey(uid), h.onlineKey(), h.lastSeenKey(uid)},
			ms(now), uid, h.cfg.presenceTTL().Milliseconds(), lastSeenTTL.Milliseconds()).Int64()
		if err != nil {
			return err
		}
		h.mu.Lock()
		offline := h.offline
		h.mu.Unlock()
		if seen > 0 && offline != nil {
			offline(ctx, uid, time.UnixMilli(seen))
		}
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
