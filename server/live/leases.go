package live

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/rpcerr"
)

// Default limits on open streams. A client needs one stream (a browser,
// one per tab); ten per session leaves room for tabs sharing a session,
// fifty per user for a person's devices, while one stolen token can no
// longer hold thousands of streams (and their memory) open.
const (
	DefaultMaxStreamsPerSession = 10
	DefaultMaxStreamsPerUser    = 50
)

// Open streams are counted in Redis, so that the limits hold across
// instances: {u:<id>}:streams is a sorted set with a lease per open
// stream of the user, "<session>/<stream>", scored with the time (ms) at
// which it lapses unless its instance renews it at the heartbeat. The
// leases of an instance that died lapse after the presence TTL, giving
// their slots back; one that was only cut off from Redis that long puts
// the leases of its streams still open back when it reaches Redis again
// (see restoreLeases), past the limits if the user opened others
// meanwhile: they then refuse new streams until enough close. A lease is
// some 50 bytes in a small set per user.

// acquireScript takes a lease if the session and the user have slots
// left, dropping lapsed leases first. It returns 0 when it took it, 1
// when the session has no slot left, 2 when the user has none.
var acquireScript = redis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local leases = redis.call('ZRANGE', KEYS[1], 0, -1)
if #leases >= tonumber(ARGV[6]) then return 2 end
local n, prefix = 0, ARGV[4]
for _, l in ipairs(leases) do
  if string.sub(l, 1, #prefix) == prefix then n = n + 1 end
end
if n >= tonumber(ARGV[5]) then return 1 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 0
`)

func (h *Hub) leasesKey(uid int) string {
	return h.cfg.Prefix + "{u:" + strconv.Itoa(uid) + "}:streams"
}

// acquire takes a lease for a new stream of the caller, or refuses with
// RESOURCE_EXHAUSTED when the caller's session or user has all the streams
// it may have. A refusal changes nothing.
func (h *Hub) acquire(ctx context.Context, id auth.Identity) (string, error) {
	lease := id.SessionID + "/" + h.instance + strconv.FormatUint(h.leases.Add(1), 36)
	now := h.cfg.Now()
	res, err := acquireScript.Run(ctx, h.rdb, []string{h.leasesKey(id.UserID)},
		ms(now), ms(now.Add(h.cfg.presenceTTL())), lease, id.SessionID+"/",
		h.cfg.MaxStreamsPerSession, h.cfg.MaxStreamsPerUser).Int()
	switch {
	case err != nil:
		// The script may have run with its answer lost: the lease would
		// hold a slot until it lapses.
		h.release(id.UserID, lease)
		return "", fmt.Errorf("acquire stream lease: %w", err)
	case res == 1:
		return "", rpcerr.TooMany("streams_per_session", fmt.Sprintf("this session has %d live streams open, the most it may", h.cfg.MaxStreamsPerSession), h.cfg.Heartbeat)
	case res == 2:
		return "", rpcerr.TooMany("streams_per_user", fmt.Sprintf("this account has %d live streams open, the most it may", h.cfg.MaxStreamsPerUser), h.cfg.Heartbeat)
	}
	return lease, nil
}

// release gives a stream's slot back.
func (h *Hub) release(uid int, lease string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.rdb.ZRem(ctx, h.leasesKey(uid), lease).Err(); err != nil {
		// It lapses with the presence TTL.
		h.log.Warn("live: release stream lease", "user", uid, "err", err)
	}
}
