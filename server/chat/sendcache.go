package chat

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// A send checks what it may of its chat: that the sender is a member, the
// chat's type and members (whom the message goes to), a private chat's
// request state and whether its other member blocked the sender. Those
// change rarely and are read on every send, so each instance keeps them
// in a sendCache, and a send costs no MongoDB find and no PostgreSQL
// query.
//
// A cached entry is valid only as long as the chat's version in Redis
// (chat:{id}:ver) is the one read before the entry was loaded, and the
// seq script, which every send runs anyway, compares the two at no extra
// round trip: a send whose entry is stale takes no seq, loads the chat
// again and checks again. Every change of what a send checks brackets its
// write (store.changing): before it, the change registers itself in
// chat:{id}:changing and sets a new version; after it, it leaves and sets
// another. So:
//
//   - an entry loaded before a change began is refused once it began;
//   - while a change is under way (or one that died holding it, or whose
//     write failed and may yet land, for changingTTL), sends read the
//     chat from the store and cache nothing;
//   - an entry loaded after the change ended read what it wrote.
//
// A send that passes the seq script with a cached entry is therefore
// judged as of the moment of its seq, and a change takes effect on every
// instance at once, as it did when every send read the store. A version
// is a random token, never a count: should Redis lose it (a restart
// without persistence, its TTL), no later version is one an entry holds.
// An entry never refuses a send, nor accepts a request, on its own: that
// is done again on the chat as the store holds it. And an entry serves
// for maxEntryAge at most, which bounds what a Redis failover that gave
// back an old version could keep alive.
//
// What an entry does not follow is the chat's last message, which every
// send moves. It is used as the floor of the seq a send takes (a counter
// that Redis lost must not hand out a seq below a stored message; see
// tryInsert), so an entry raises its floor with every send through this
// instance. A counter that goes back while the version stays (a failover
// that lost the counter's last writes but not the version's) can still
// hand an instance whose entry is older than those writes a seq in a gap
// below the last message; the unique seq index keeps seqs unique, and a
// reader that passed that seq does not see the message until it reads the
// chat again.

// sendCacheSize bounds the chats an instance keeps (an entry is a chat
// document: a few hundred bytes for a private chat, up to tens of kB for
// a group of MaxGroupSize).
const sendCacheSize = 10_000

// changingTTL bounds how long a change that never said it ended (its
// instance died) keeps sends of the chat off the cache.
const changingTTL = 30 * time.Second

// errStaleChat tells a send that the chat changed since its cached entry
// was loaded (see sendCache).
var errStaleChat = errors.New("the chat changed since it was cached")

type sendCache struct {
	entries *lru.Cache[bson.ObjectID, *sendEntry]
}

// sendEntry is a chat as loaded at version, with the blocks found since:
// blocked[u] is whether the other member of the private chat blocked u.
// floor is the largest seq known to be taken in the chat: its last
// message when loaded, raised by every send through this instance (a
// counter that Redis lost takes no seq below it; see tryInsert).
type sendEntry struct {
	chat    *chatDoc
	version string
	loaded  time.Time
	floor   atomic.Int64

	mu      sync.Mutex
	blocked map[int]bool
}

func newSendCache() *sendCache {
	c, err := lru.New[bson.ObjectID, *sendEntry](sendCacheSize)
	if err != nil {
		panic(err) // only for a size below 1
	}
	return &sendCache{entries: c}
}

func (s *store) versionKey(chatID bson.ObjectID) string {
	return (&seqAllocator{prefix: s.redisPrefix}).versionKey(chatID)
}

func (s *store) changingKey(chatID bson.ObjectID) string {
	return s.redisPrefix + "chat:{" + chatID.Hex() + "}:changing"
}

// versionTTL is how long a chat's version lasts in Redis after a send
// last loaded the chat or a change last set it. A version that expired
// starts again from a random token, which no entry holds.
const versionTTL = 7 * 24 * time.Hour

// maxEntryAge bounds how long an entry serves sends, whatever its
// version: should Redis give back an old version (a failover that lost
// a change's writes), entries from before the change end this late.
const maxEntryAge = time.Minute

// Times in the scripts are Redis's own (TIME), so that instances' clocks
// do not matter.
const redisNowMs = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// versionScript returns the chat's version (KEYS[1]), starting it at
// ARGV[1] when Redis has none, and keeps it for ARGV[2] ms more; or false
// while a change is under way (KEYS[2], changes by their end time).
var versionScript = redis.NewScript(redisNowMs + `
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) > 0 then return false end
local v = redis.call('GET', KEYS[1])
if not v then
  v = ARGV[1]
  redis.call('SET', KEYS[1], v)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return v
`)

// beginScript registers a change (ARGV[1]) for ARGV[2] ms and sets the
// version to a new token (ARGV[3], kept ARGV[4] ms); endScript takes the
// change off and sets the version to another new token.
var (
	beginScript = redis.NewScript(redisNowMs + `
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
`)
	endScript = redis.NewScript(`
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`)
)

// chatVersion returns the chat's version, and false while a change of
// it is under way.
func (s *store) chatVersion(ctx context.Context, chatID bson.ObjectID) (string, bool, error) {
	v, err := versionScript.Run(ctx, s.rdb, []string{s.versionKey(chatID), s.changingKey(chatID)},
		newToken(), versionTTL.Milliseconds()).Text()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("chat version: %w", err)
	}
	return v, true, nil
}

// changing runs write, a change of what sends check of the chat, so that
// no send judged by the chat as it was before passes after write began
// (see sendCache). It fails without writing when Redis cannot be told.
// The write runs to its end (or changingTTL's margin) even when ctx ends
// first, since the store may apply it anyway; a write that fails leaves
// the change registered until it expires, as it may yet land.
func (s *store) changing(ctx context.Context, chatID bson.ObjectID, write func(ctx context.Context) error) error {
	token := newToken()
	keys := []string{s.versionKey(chatID), s.changingKey(chatID)}
	err := beginScript.Run(ctx, s.rdb, keys, token, changingTTL.Milliseconds(), newToken(), versionTTL.Milliseconds()).Err()
	if err != nil {
		return fmt.Errorf("chat change: %w", err)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changingTTL-5*time.Second)
	defer cancel()
	if err := write(wctx); err != nil {
		return err
	}
	// Should this fail, the change ends when its registration expires:
	// the write is made, and sends stay off the cache until then.
	_ = endScript.Run(wctx, s.rdb, keys, token, newToken(), versionTTL.Milliseconds()).Err()
	return nil
}

// newToken returns a random version or change token.
func newToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return strconv.FormatUint(binary.LittleEndian.Uint64(b[:]), 36)
}

// How sendView reads the chat.
type viewMode int

const (
	fromCache viewMode = iota // the cached entry if any, else as fromStore
	fromStore                 // from the store, cached with its version
	uncached                  // from the store, with no version
)

// sendView returns the chat that a send checks, and the version it was
// loaded at (uncached, or while the chat changes: "", no check at the
// seq), reporting whether it came from the cache.
func (s *Service) sendView(ctx context.Context, chatID bson.ObjectID, mode viewMode) (*sendEntry, bool, error) {
	if mode == fromCache {
		if e, ok := s.sends.entries.Get(chatID); ok && time.Since(e.loaded) < maxEntryAge {
			return e, true, nil
		}
	}
	// The version first: a change that begins after it sets another, so
	// a chat read after that is refused at the seq, or read after the
	// change's write.
	version, ok := "", false
	if mode != uncached {
		var err error
		if version, ok, err = s.store.chatVersion(ctx, chatID); err != nil {
			return nil, false, err
		}
	}
	c, err := s.store.getChat(ctx, chatID)
	if err != nil {
		return nil, false, err
	}
	e := &sendEntry{chat: c, version: version, loaded: time.Now()}
	e.floor.Store(lastSeq(c))
	if ok {
		s.sends.entries.Add(chatID, e)
	}
	return e, false, nil
}

// blockedBy reports whether the other member of the entry's private chat
// blocked sender: once per entry and sender from the store.
func (s *Service) blockedBy(ctx context.Context, e *sendEntry, sender int) (bool, error) {
	e.mu.Lock()
	b, ok := e.blocked[sender]
	e.mu.Unlock()
	if ok {
		return b, nil
	}
	b, err := s.blocksCaller(ctx, e.chat, sender)
	if err != nil {
		return false, err
	}
	e.mu.Lock()
	if e.blocked == nil {
		e.blocked = map[int]bool{}
	}
	e.blocked[sender] = b
	e.mu.Unlock()
	return b, nil
}

// sentTo raises the floor of the chat's cached entry to seq, just taken.
func (s *Service) sentTo(chatID bson.ObjectID, seq int64) {
	e, ok := s.sends.entries.Peek(chatID)
	if !ok {
		return
	}
	for {
		cur := e.floor.Load()
		if cur >= seq || e.floor.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// forgetChat drops the chat's cached entry, found stale.
func (s *Service) forgetChat(chatID bson.ObjectID) {
	s.sends.entries.Remove(chatID)
}

// ChangingPair runs write, a change of blocks between users a and b, so
// that the private chat of the two (if any) takes it into account at
// once on every instance (see sendCache). The user service calls it
// around each block and unblock.
func (s *Service) ChangingPair(ctx context.Context, a, b int, write func(ctx context.Context) error) error {
	c, err := s.store.findPrivate(ctx, a, b)
	if err != nil && !errors.Is(err, errNoChat) {
		return err
	}
	if c != nil {
		return s.store.changing(ctx, c.ID, write)
	}
	if err := write(ctx); err != nil {
		return err
	}
	// A chat that the two started meanwhile may be cached with the blocks
	// as they were: it starts again.
	c, err = s.store.findPrivate(ctx, a, b)
	if errors.Is(err, errNoChat) {
		return nil
	}
	if err != nil {
		return err
	}
	return s.store.changing(ctx, c.ID, func(context.Context) error { return nil })
}
