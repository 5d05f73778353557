package live

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

// Each user's event log is a Redis stream whose entry ids are the cursors
// clients resume from. Appending to it and publishing the entry on the
// user's channel happen in one script, so the order in which subscribers
// hear about entries is the order of the log. The script does so for
// each of its keys (the logs; ARGV[4+i]: the channel of KEYS[i]), so
// that one call serves many users where a call per user cost Redis and
// the server more than the appends themselves. On a Redis Cluster a
// script may touch the keys of one slot only, and users' logs are spread
// over slots: there each user gets a call of its own, and the channel,
// which carries the log's hash tag, gets the entry by ARGV[3]: SPUBLISH,
// on the node that holds the log.
var appendScript = redis.NewScript(`
for i, key in ipairs(KEYS) do
  local id = redis.call('XADD', key, 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[4])
  redis.call('PEXPIRE', key, ARGV[2])
  redis.call(ARGV[3], ARGV[4 + i], id .. ' ' .. ARGV[4])
end
return #KEYS
`)

// appendsPerCall bounds the users of one appendScript call on a single
// Redis, and so how long Redis runs it without serving others (about
// 10 µs a user).
const appendsPerCall = 100

// tailScript returns the id of the log's last entry. An empty log gets a
// marker entry first, so that every cursor handed out names an entry,
// which is how a resumed stream tells that nothing after it was trimmed.
var tailScript = redis.NewScript(`
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then return last[1][1] end
local id = redis.call('XADD', KEYS[1], '*', 'm', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return id
`)

// errCursorExpired means events after a cursor may be gone from the log.
var errCursorExpired = errors.New("the cursor is older than the events the server keeps, or the event log was lost")

func (h *Hub) streamKey(userID int) string {
	return h.cfg.Prefix + "{u:" + strconv.Itoa(userID) + "}:events"
}

// channel is the user's pub/sub channel, in the slot of the user's log.
func (h *Hub) channel(userID int) string {
	return h.cfg.Prefix + "{u:" + strconv.Itoa(userID) + "}:live"
}

func (h *Hub) userOfChannel(ch string) (int, bool) {
	s, ok := strings.CutPrefix(ch, h.cfg.Prefix+"{u:")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, "}:live")
	if !ok {
		return 0, false
	}
	id, err := strconv.Atoi(s)
	return id, err == nil
}

// Publish appends the event to the log of each user and delivers it live
// to their open streams, on every instance. It returns once every log has
// it, so an event whose Publish succeeded is never missed by a client that
// resumes from an earlier cursor.
func (h *Hub) Publish(ctx context.Context, userIDs []int, ev *parleyv1.Event) error {
	return h.PublishWith(ctx, userIDs, ev, nil, nil)
}

// PublishWith is Publish with the caller's own Redis commands in the same
// round trip: those that before queues run ahead of the event's, those
// that after queues behind them (Redis runs a pipeline's commands in
// order; on a Redis Cluster, before's go in a round trip of their own, and
// after's may run alongside the appends on other nodes). It fails if any of them does. When Redis had forgotten the
// logging script, the event goes again to the users it missed, followed
// by after's commands again: they run at least once after the event is
// logged for every user, but they may also have run before, so a caller
// whose after marks the event as published must undo the mark when
// PublishWith fails.
func (h *Hub) PublishWith(ctx context.Context, userIDs []int, ev *parleyv1.Event, before, after func(p redis.Pipeliner)) error {
	if len(userIDs) == 0 && before == nil && after == nil {
		return nil
	}
	if ev.Time == nil {
		ev.Time = timestamppb.New(h.cfg.Now())
	}
	payload, err := proto.Marshal(ev)
	if err != nil {
		return err
	}
	maxLen := strconv.Itoa(h.cfg.MaxEvents)
	retention := strconv.FormatInt(h.cfg.Retention.Milliseconds(), 10)
	if before != nil && h.sharded() {
		// A cluster client sends each node its part of a pipeline at
		// once: before's commands, on other nodes than the logs, would
		// no longer run ahead. They go first, in a round trip of their
		// own.
		if _, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error { before(p); return nil }); err != nil {
			return fmt.Errorf("live: publish: %w", err)
		}
		before = nil
	}
	// The users each append of the pipeline is for, in order.
	perCall := appendsPerCall
	if h.sharded() {
		perCall = 1
	}
	calls := slices.Collect(slices.Chunk(userIDs, perCall))
	appendTo := func(p redis.Pipeliner, users []int, eval bool) {
		keys := make([]string, len(users))
		args := make([]any, 4, 4+len(users))
		args[0], args[1], args[2], args[3] = maxLen, retention, h.publish, payload
		for i, uid := range users {
			keys[i] = h.streamKey(uid)
			args = append(args, h.channel(uid))
		}
		if eval {
			appendScript.Eval(ctx, p, keys, args...)
		} else {
			appendScript.EvalSha(ctx, p, keys, args...)
		}
	}
	first := 0 // the index of the first append in the pipeline
	cmds, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		if before != nil {
			before(p)
			first = p.Len()
		}
		for _, users := range calls {
			appendTo(p, users, false)
		}
		if after != nil {
			after(p)
		}
		return nil
	})
	if err == nil {
		eventsPublished.Add(float64(len(userIDs)))
		return nil
	}
	// A Redis that restarted has forgotten the scripts: send them whole
	// for the users they failed for (a NOSCRIPT error appended nothing).
	var retry [][]int
	for i, c := range cmds {
		err := c.Err()
		if err == nil {
			continue
		}
		if i < first || i >= first+len(calls) || !redis.HasErrorPrefix(err, "NOSCRIPT") {
			return fmt.Errorf("live: publish: %w", err)
		}
		retry = append(retry, calls[i-first])
	}
	_, err = h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, users := range retry {
			appendTo(p, users, true)
		}
		if after != nil {
			after(p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("live: publish: %w", err)
	}
	eventsPublished.Add(float64(len(userIDs)))
	return nil
}

// Notify delivers an event that changes no state (typing) to the open
// streams of the users, without logging it: a client that is not
// connected has no use for it later.
func (h *Hub) Notify(ctx context.Context, userIDs []int, ev *parleyv1.Event) error {
	if len(userIDs) == 0 {
		return nil
	}
	if ev.Time == nil {
		ev.Time = timestamppb.New(h.cfg.Now())
	}
	payload, err := proto.Marshal(ev)
	if err != nil {
		return err
	}
	msg := " " + string(payload)
	_, err = h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, uid := range userIDs {
			p.Do(ctx, h.publish, h.channel(uid), msg)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("live: notify: %w", err)
	}
	return nil
}

// tail is the cursor of the last entry of the user's log.
func (h *Hub) tail(ctx context.Context, userID int) (string, error) {
	retention := strconv.FormatInt(h.cfg.Retention.Milliseconds(), 10)
	return tailScript.Run(ctx, h.rdb, []string{h.streamKey(userID)}, retention).Text()
}

// logged is one entry of a log: an event, or a marker (ev nil).
type logged struct {
	cursor string
	ev     *parleyv1.Event
}

// readAfter returns up to count entries after cursor, or errCursorExpired
// when the entry the cursor names is no longer in the log (trimmed, or
// the log was lost with Redis).
func (h *Hub) readAfter(ctx context.Context, userID int, cursor string, count int) ([]logged, error) {
	msgs, err := h.rdb.XRangeN(ctx, h.streamKey(userID), cursor, "+", int64(count)+1).Result()
	if err != nil {
		return nil, err
	}
	if len(msgs) == 0 || msgs[0].ID != cursor {
		return nil, errCursorExpired
	}
	out := make([]logged, 0, len(msgs)-1)
	for _, m := range msgs[1:] {
		e := logged{cursor: m.ID}
		if raw, ok := m.Values["e"].(string); ok {
			ev := &parleyv1.Event{}
			if err := proto.Unmarshal([]byte(raw), ev); err != nil {
				h.log.ErrorContext(ctx, "live: undecodable log entry", "user", userID, "id", m.ID, "err", err)
			} else {
				ev.Cursor = m.ID
				e.ev = ev
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// cursorID is a parsed stream entry id, ordered as Redis orders them.
type cursorID struct{ ms, seq uint64 }

func parseCursor(s string) (cursorID, bool) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return cursorID{}, false
	}
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	return cursorID{ms, seq}, err1 == nil && err2 == nil
}

func (c cursorID) after(d cursorID) bool {
	return c.ms > d.ms || (c.ms == d.ms && c.seq > d.seq)
}

// now is a timestamp for events made here.
func (h *Hub) now() *timestamppb.Timestamp { return timestamppb.New(h.cfg.Now()) }
