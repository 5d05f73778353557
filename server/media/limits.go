package media

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/parley-chat/parley/server/rpcerr"
)

// Defaults of the per-user upload limits in Config.
const (
	// DefaultMaxConcurrentUploads lets a client send a few files of an
	// album side by side; more only split the same bandwidth.
	DefaultMaxConcurrentUploads = 4
	// DefaultMaxUnsentBytes is two of the largest videos: files uploaded
	// and not yet sent (or made an avatar) are kept for a day at the
	// server's cost, so a user may not park more than that.
	DefaultMaxUnsentBytes = 2 << 30
	// DefaultMinUploadRate and DefaultUploadRateWindow end an upload
	// that brings less than 2 KiB/s over the last 30 s. 2 KiB/s is 16
	// kbit/s, below what GPRS (the slowest mobile data still in use,
	// 30-40 kbit/s in practice) carries; 30 s averages over the stalls
	// of a moving phone (a link doing 8 KiB/s may stop for 22 s). A
	// client trickling a byte every few seconds holds its connection
	// for 30 s, not 6 hours.
	DefaultMinUploadRate    = 2 << 10
	DefaultUploadRateWindow = 30 * time.Second
)

// uploadLease is how long a claim on one of a user's concurrent upload
// slots lasts unless renewed: the instance receiving the body renews it
// every third of that, so a crashed instance's slots free themselves.
const uploadLease = 30 * time.Second

// acquireScript takes one of the user's upload slots (a sorted set of
// media ids scored by lease expiry, in Redis time so that instances'
// clocks do not matter) if fewer than ARGV[2] unexpired ones are held.
// It is also the renewal: a held slot is always extended.
var acquireScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
`)

// uploadSlot is one of a user's concurrent upload slots, held while the
// body of an upload is received.
type uploadSlot struct {
	rdb  redis.UniversalClient
	log  *slog.Logger
	key  string
	id   string
	stop chan struct{}
	done chan struct{}
}

func (s *Service) slotKey(userID int) string {
	return s.cfg.RedisPrefix + "media:receiving:" + strconv.Itoa(userID)
}

// acquireSlot takes an upload slot of the user for the media, or answers
// RESOURCE_EXHAUSTED when the user has MaxConcurrentUploads bodies in
// flight already. The slot is renewed until release.
func (s *Service) acquireSlot(ctx context.Context, userID int, id bson.ObjectID) (*uploadSlot, error) {
	sl := &uploadSlot{rdb: s.rdb, log: s.log, key: s.slotKey(userID), id: id.Hex(), stop: make(chan struct{}), done: make(chan struct{})}
	ok, err := sl.take(ctx, s.cfg.MaxConcurrentUploads)
	if err != nil {
		return nil, err
	}
	if !ok {
		// When a slot frees cannot be known; uploads of a few megabytes
		// take seconds.
		return nil, rpcerr.TooMany("concurrent_uploads", fmt.Sprintf("too many uploads at once: at most %d", s.cfg.MaxConcurrentUploads), 2*time.Second)
	}
	go sl.renew(context.WithoutCancel(ctx), s.cfg.MaxConcurrentUploads)
	return sl, nil
}

func (sl *uploadSlot) take(ctx context.Context, limit int) (bool, error) {
	n, err := acquireScript.Run(ctx, sl.rdb, []string{sl.key}, uploadLease.Milliseconds(), limit, sl.id).Int()
	if err != nil {
		return false, fmt.Errorf("upload slot: %w", err)
	}
	return n == 1, nil
}

func (sl *uploadSlot) renew(ctx context.Context, limit int) {
	defer close(sl.done)
	t := time.NewTicker(uploadLease / 3)
	defer t.Stop()
	for {
		select {
		case <-sl.stop:
			return
		case <-t.C:
			// A held slot is always extended; a failure leaves the
			// lease to run out, and the upload goes on.
			if _, err := sl.take(ctx, limit); err != nil {
				sl.log.WarnContext(ctx, "renew upload slot", "media", sl.id, "err", err)
			}
		}
	}
}

// release frees the slot.
func (sl *uploadSlot) release(ctx context.Context) {
	close(sl.stop)
	<-sl.done
	if err := sl.rdb.ZRem(ctx, sl.key, sl.id).Err(); err != nil {
		// The lease runs out by itself.
		sl.log.WarnContext(ctx, "release upload slot", "media", sl.id, "err", err)
	}
}

// reserveUnsent checks, and holds the user's quota lock while insert
// stores, a new upload of size bytes against MaxUnsentBytes: the
// declared sizes of the user's uploads not yet sent in a message or made
// an avatar (pending ones whose upload URL can still be used, those being
// received and those ready). Declared sizes are exact, so uploads in
// flight count in full from CreateUpload on and concurrent ones cannot
// overrun the quota together. Under the lock, before either, earlier
// reports whether the upload was created already (a retry): then nothing
// is checked or stored.
func (s *Service) reserveUnsent(ctx context.Context, userID int, size int64, earlier func() (bool, error), insert func() error) error {
	return s.quotaLocks.Do(ctx, strconv.Itoa(userID), func() error {
		if found, err := earlier(); found || err != nil {
			return err
		}
		used, err := s.lib.store.unsentBytes(ctx, userID, s.cfg.Now().Add(-s.cfg.UploadTTL))
		if err != nil {
			return err
		}
		if used+size > s.cfg.MaxUnsentBytes {
			// Space frees when files are sent, or deleted by clean-up
			// (after -media-cleanup-after); a minute is a guess.
			return rpcerr.TooMany("unsent_bytes", fmt.Sprintf("too many unsent files: %d bytes are uploaded and not sent, %d more would pass the limit of %d; send or wait for them to expire",
				used, size, s.cfg.MaxUnsentBytes), time.Minute)
		}
		return insert()
	})
}

// errTooSlow ends an upload that brings less than the minimum rate.
var errTooSlow = errors.New("upload below the minimum rate")

// rateTicks is how many steps the rate window slides in.
const rateTicks = 10

// bodyReader reads an upload's body within both the idle timeout (each
// read must make progress) and a rate floor: once the body has run for
// window, it ends when fewer than minRate bytes a second arrived over the
// last window, by making its pending read time out. A client sending a
// byte now and then passes an idle timeout, but not this.
type bodyReader struct {
	io.ReadCloser
	received atomic.Int64
	stop     chan struct{}
	stopOnce sync.Once

	mu       sync.Mutex // orders the watch's expiry and Read's extension
	deadline idleDeadline
	slow     bool
}

// newBodyReader starts the rate watch of body, whose read deadline set
// moves; close must end it.
func newBodyReader(body io.ReadCloser, set func(time.Time) error, idle time.Duration, minRate int64, window time.Duration) *bodyReader {
	b := &bodyReader{ReadCloser: body, stop: make(chan struct{}), deadline: idleDeadline{set: set, idle: idle}}
	go b.watch(int64(float64(minRate)*window.Seconds()), max(window/rateTicks, time.Millisecond))
	return b
}

func (b *bodyReader) watch(need int64, tick time.Duration) {
	t := time.NewTicker(tick)
	defer t.Stop()
	// seen[n%rateTicks] is what had arrived at tick n; at tick n it still
	// holds the count of tick n-rateTicks, a window ago (0 at the start).
	var seen [rateTicks]int64
	for n := 1; ; n++ {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		now, i := b.received.Load(), n%rateTicks
		if n >= rateTicks && now-seen[i] < need {
			b.mu.Lock()
			b.slow = true
			_ = b.deadline.set(time.Now())
			b.mu.Unlock()
			return
		}
		seen[i] = now
	}
}

// done ends the rate watch: the body is complete, or the upload over.
func (b *bodyReader) done() { b.stopOnce.Do(func() { close(b.stop) }) }

// tooSlow reports whether the rate floor ended the body.
func (b *bodyReader) tooSlow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.slow
}

func (b *bodyReader) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.slow {
		b.mu.Unlock()
		return 0, errTooSlow
	}
	b.deadline.extend()
	b.mu.Unlock()
	n, err := b.ReadCloser.Read(p)
	b.received.Add(int64(n))
	switch {
	case errors.Is(err, io.EOF):
		// The body is complete: net/http's own read of the connection
		// that follows must not run into our deadline while the upload
		// is still being processed. (After a failure the deadline stays,
		// so that the server gives up on the rest of a stalled body.)
		b.done()
		b.mu.Lock()
		if !b.slow {
			b.deadline.clear()
		}
		b.mu.Unlock()
	case err != nil && b.tooSlow():
		err = errTooSlow
	}
	return n, err
}
