package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/redisconn"
)

// session is one signed-in client, as kept in Redis.
type session struct {
	ID         string
	UserID     int
	Generation int64
	Salt       string
	CreatedAt  time.Time
	LastUsedAt time.Time
	UserAgent  string
	Address    string
}

// sessionStore keeps sessions in Redis. A session is a hash under
// "<prefix>{u:<user>}:session:<id>" holding the user's id and the session's
// current JWT (the customer's data model) and its metadata; each user also
// has a sorted set of session ids, "<prefix>{u:<user>}:sessions". Both keys
// carry the user's hash tag, so the scripts that touch both work on Redis
// Cluster too. Both expire with the refresh token.
//
// A session's end and a refresh token's rotation are the writes that must
// not be undone by a failover (a revoked session, or a refresh token that
// was used, coming back): they wait for replicas replicas to have them
// (WAIT), and fail with redisconn.ErrNotReplicated (UNAVAILABLE to the
// client, which retries) when they do not in time. A rotation that
// failed so was made on the master nonetheless: the session records it as
// unconfirmed, and the client's retry with the same refresh token, within
// unconfirmedRetry, is answered with the pair the rotation made instead
// of being taken for a reuse (see rotateScript).
type sessionStore struct {
	rdb        redis.UniversalClient
	prefix     string
	refreshTTL time.Duration
	now        func() time.Time
	replicas   int
}

// replicaTimeout is how long a revocation or a rotation waits for its
// replicas.
const replicaTimeout = 500 * time.Millisecond

// unconfirmedRetry is how long after a rotation that its replicas did not
// confirm in time (the client was answered UNAVAILABLE) the refresh token
// it used is taken as that client's retry, once, rather than as a reuse.
const unconfirmedRetry = time.Minute

// RefreshRetryGrace is how long after a rotation the refresh token it
// used still gets that rotation's generation, with a new access token,
// rather than revoke the session as a reuse: a client whose answer was
// lost (a mobile network that dropped, a timeout) retries with the token
// it has, and two requests of one client may refresh at once. Only from
// the client that made the rotation, as far as the server can tell
// without binding it to a network that a phone changes as it moves: the
// same User-Agent. A copy of the token used by another program within it
// is a reuse, as at any time; one that also copies the User-Agent shares
// the session's next refresh token with its owner, until either
// refreshes again past the grace and the other's next use is a reuse.
const RefreshRetryGrace = 30 * time.Second

// rotationClient is what a retry must come from to get the grace: the
// client's User-Agent, hashed.
func rotationClient(userAgent string) string {
	sum := sha256.Sum256([]byte(userAgent))
	return hex.EncodeToString(sum[:16])
}

func (s *sessionStore) sessionKey(userID int, id string) string {
	return fmt.Sprintf("%s{u:%d}:session:%s", s.prefix, userID, id)
}

func (s *sessionStore) userKey(userID int) string {
	return fmt.Sprintf("%s{u:%d}:sessions", s.prefix, userID)
}

func newSessionID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// validSessionID reports whether id has the shape newSessionID gives.
func validSessionID(id string) bool {
	if !keyring.TokenChars(id) {
		return false
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(id)
	return err == nil && len(b) == 16
}

// create stores a new session with its first access token.
func (s *sessionStore) create(ctx context.Context, sess *session, jwt string) error {
	now := s.now()
	sess.CreatedAt, sess.LastUsedAt = now, now
	key, ukey := s.sessionKey(sess.UserID, sess.ID), s.userKey(sess.UserID)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, key,
			"user_id", sess.UserID,
			"jwt", jwt,
			"gen", sess.Generation,
			"salt", sess.Salt,
			"created", now.UnixMilli(),
			"used", now.UnixMilli(),
			"ua", sess.UserAgent,
			"addr", sess.Address,
		)
		p.Expire(ctx, key, s.refreshTTL)
		p.ZAdd(ctx, ukey, redis.Z{Score: float64(now.UnixMilli()), Member: sess.ID})
		p.Expire(ctx, ukey, s.refreshTTL)
		return nil
	})
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	return nil
}

// errNoSession means the session ended: logged out, revoked or expired.
var errNoSession = errors.New("session ended")

// get returns a session, or errNoSession.
func (s *sessionStore) get(ctx context.Context, userID int, id string) (*session, error) {
	m, err := s.rdb.HGetAll(ctx, s.sessionKey(userID, id)).Result()
	if err != nil {
		return nil, fmt.Errorf("get session: %w", err)
	}
	if len(m) == 0 {
		return nil, errNoSession
	}
	return parseSession(id, m)
}

func parseSession(id string, m map[string]string) (*session, error) {
	uid, err1 := strconv.Atoi(m["user_id"])
	gen, err2 := strconv.ParseInt(m["gen"], 10, 64)
	created, err3 := strconv.ParseInt(m["created"], 10, 64)
	used, err4 := strconv.ParseInt(m["used"], 10, 64)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return nil, fmt.Errorf("session %s is malformed: %w", id, err)
	}
	return &session{
		ID: id, UserID: uid, Generation: gen, Salt: m["salt"],
		CreatedAt: time.UnixMilli(created), LastUsedAt: time.UnixMilli(used),
		UserAgent: m["ua"], Address: m["addr"],
	}, nil
}

// touchEvery is how stale a session's last-used time may get before an
// authenticated call updates it; it keeps the check to one read per call.
const touchEvery = time.Minute

// check confirms that the session is open, and records its use.
func (s *sessionStore) check(ctx context.Context, userID int, id string) error {
	key := s.sessionKey(userID, id)
	vals, err := s.rdb.HMGet(ctx, key, "user_id", "used").Result()
	if err != nil {
		return fmt.Errorf("check session: %w", err)
	}
	if vals[0] == nil {
		return errNoSession
	}
	if used, ok := vals[1].(string); ok {
		ms, _ := strconv.ParseInt(used, 10, 64)
		if now := s.now(); now.Sub(time.UnixMilli(ms)) > touchEvery {
			// HSETEX-like: only touch a session that still exists.
			if err := touchScript.Run(ctx, s.rdb, []string{key}, now.UnixMilli()).Err(); err != nil && !errors.Is(err, redis.Nil) {
				return fmt.Errorf("touch session: %w", err)
			}
		}
	}
	return nil
}

var touchScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'used', ARGV[1])
end
return 1
`)

// rotateScript moves a session to the next generation if it is still at
// the expected one. It returns the new generation, 0 when the session is
// gone, or -1 when the expected generation is stale: the refresh token
// was used before, so the session is deleted. A use of the token of the
// generation before is not a reuse when it is the retry of a rotation
// whose replicas did not confirm it in time (the session's "unconfirmed"
// field, the time markUnconfirmed recorded, at most ARGV[6] ms before
// now), or comes within ARGV[7] ms of the rotation (its "rotated" field;
// see RefreshRetryGrace) from the client that made it (ARGV[8], as its
// "rotatedBy" field holds it): it gets the generation that rotation made,
// with a new access token, and the rotation is confirmed anew.
var rotateScript = redis.NewScript(`
local s = redis.call('HMGET', KEYS[1], 'gen', 'unconfirmed', 'rotated', 'rotatedBy')
if not s[1] then return 0 end
local gen = tonumber(s[1])
local want = tonumber(ARGV[1])
local now = tonumber(ARGV[3])
local next = gen + 1
if gen == want + 1 and ((s[2] and now - tonumber(s[2]) <= tonumber(ARGV[6])) or (s[3] and now - tonumber(s[3]) <= tonumber(ARGV[7]) and s[4] == ARGV[8])) then
  next = gen
elseif gen ~= want then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[5])
  return -1
end
redis.call('HSET', KEYS[1], 'gen', next, 'jwt', ARGV[2], 'used', ARGV[3])
if next > gen then redis.call('HSET', KEYS[1], 'rotated', ARGV[3], 'rotatedBy', ARGV[8]) end
redis.call('HDEL', KEYS[1], 'unconfirmed')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return next
`)

// markUnconfirmedScript records, at ARGV[2], that the rotation to
// generation ARGV[1] was not confirmed, if the session is still at it.
var markUnconfirmedScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'gen') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'unconfirmed', ARGV[2])
end
return 1
`)

// errRefreshReused means a refresh token was presented a second time; the
// session has been revoked.
var errRefreshReused = errors.New("refresh token reused; the session is revoked")

// rotate advances the session from generation gen, storing the new access
// token, for client (see rotationClient). It returns the new generation.
func (s *sessionStore) rotate(ctx context.Context, userID int, id string, gen int64, jwt, client string) (int64, error) {
	key := s.sessionKey(userID, id)
	var cmd *redis.Cmd
	_, err := redisconn.Replicated(ctx, s.rdb, key, s.replicas, replicaTimeout, func(p redis.Pipeliner) {
		// The script goes whole: a pipeline cannot fall back from an
		// EVALSHA that Redis does not know.
		cmd = rotateScript.Eval(ctx, p, []string{key, s.userKey(userID)},
			gen, jwt, s.now().UnixMilli(), s.refreshTTL.Milliseconds(), id, unconfirmedRetry.Milliseconds(), RefreshRetryGrace.Milliseconds(), client)
	})
	if cmd == nil {
		return 0, fmt.Errorf("rotate session: %w", err)
	}
	res, rerr := cmd.Int64()
	switch {
	case rerr != nil:
		return 0, fmt.Errorf("rotate session: %w", rerr)
	case err != nil:
		// The rotation (or the revocation of a reused token) is made
		// but may not survive a failover. A rotation that does is the
		// one the client's retry gets.
		if res > 0 {
			if merr := markUnconfirmedScript.Run(ctx, s.rdb, []string{key}, res, s.now().UnixMilli()).Err(); merr != nil {
				err = errors.Join(err, fmt.Errorf("mark the rotation unconfirmed: %w", merr))
			}
		}
		return 0, fmt.Errorf("rotate session: %w", err)
	case res == 0:
		return 0, errNoSession
	case res < 0:
		return 0, errRefreshReused
	}
	return res, nil
}

// revokeScript deletes a session and its id from the user's set; it
// returns 1 if the session was there.
var revokeScript = redis.NewScript(`
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return n
`)

// revoke deletes one of the user's sessions. It returns errNoSession if
// there was none.
func (s *sessionStore) revoke(ctx context.Context, userID int, id string) error {
	key := s.sessionKey(userID, id)
	var cmd *redis.Cmd
	_, err := redisconn.Replicated(ctx, s.rdb, key, s.replicas, replicaTimeout, func(p redis.Pipeliner) {
		cmd = revokeScript.Eval(ctx, p, []string{key, s.userKey(userID)}, id)
	})
	if cmd == nil {
		return fmt.Errorf("revoke session: %w", err)
	}
	n, rerr := cmd.Int64()
	switch {
	case rerr != nil:
		return fmt.Errorf("revoke session: %w", rerr)
	case err != nil:
		return fmt.Errorf("revoke session: %w", err)
	case n == 0:
		return errNoSession
	}
	return nil
}

// list returns the user's open sessions, newest first, and forgets the ids
// of sessions that expired.
func (s *sessionStore) list(ctx context.Context, userID int) ([]*session, error) {
	ukey := s.userKey(userID)
	ids, err := s.rdb.ZRevRange(ctx, ukey, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HGetAll(ctx, s.sessionKey(userID, id))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	var out []*session
	var gone []any
	for i, cmd := range cmds {
		if len(cmd.Val()) == 0 {
			gone = append(gone, ids[i])
			continue
		}
		sess, err := parseSession(ids[i], cmd.Val())
		if err != nil {
			return nil, err
		}
		out = append(out, sess)
	}
	if len(gone) > 0 {
		if err := s.rdb.ZRem(ctx, ukey, gone...).Err(); err != nil {
			return nil, fmt.Errorf("list sessions: %w", err)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, nil
}

// open reports, for each caller, whether its session still exists, in one
// round trip however many there are.
func (s *sessionStore) open(ctx context.Context, ids []Identity) ([]bool, error) {
	cmds := make([]*redis.IntCmd, len(ids))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.Exists(ctx, s.sessionKey(id.UserID, id.SessionID))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("check sessions: %w", err)
	}
	out := make([]bool, len(ids))
	for i, c := range cmds {
		out[i] = c.Val() > 0
	}
	return out, nil
}
