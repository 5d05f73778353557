package push

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The queue is two Redis keys under one hash tag ({pushq}), so that the
// script that moves jobs between them runs on one node of a Redis
// Cluster:
//
//   - {pushq}:jobs is a stream of jobs to do now, read through the
//     consumer group "push" by every instance's workers; a job stays
//     pending with its worker until done, and one whose worker died is
//     taken over (XAUTOCLAIM) after Config.ClaimAfter;
//   - {pushq}:later is a sorted set of jobs for later (retries, the ends
//     of collapse windows), scored by when (ms), which the workers move
//     to the stream when their time comes;
//   - {pushq}:subscribed is the set of users who have a subscription (or
//     had one lately: it may hold more, never fewer), and
//     {pushq}:subscribed:ready says that it is whole (see
//     store.rebuildSubscribed). An event none of whose recipients is in
//     it queues no job (addScript): most sends reach nobody with a device
//     to push to, and a job would cost a worker a fan-out of several
//     round trips for nothing;
//   - {pushq}:queued:<kind>:<chat>:<seq>[:<actor>:<emoji>] marks an
//     event's job as queued, for queuedFor (addScript): one key per
//     pushed event, on the queue's node.
//
// All are kept by Redis, so jobs outlive the instances.

// Types of job.
const (
	// jobEvent fans a chat event out to its recipients' devices.
	jobEvent = "event"
	// jobSend sends one push (to one device: a job is at most one
	// request to a push service).
	jobSend = "send"
	// jobFlush sends the push kept at the end of a collapse window.
	jobFlush = "flush"
)

// Kinds of event, as pushes name them.
const (
	KindMessage  = "message"
	KindMention  = "mention"
	KindReaction = "reaction"
)

// job is one unit of the queue's work, as JSON.
type job struct {
	Type    string `json:"type"`
	ID      string `json:"id,omitempty"`
	Attempt int    `json:"attempt,omitempty"`
	Chat    string `json:"chat"`

	// Of an event: a new message (KindMessage) or a reaction
	// (KindReaction), by Actor, announced to Users. Of a flush: the kind
	// of the pushes the window kept (KindMessage when empty).
	Kind        string `json:"kind,omitempty"`
	Seq         int64  `json:"seq,omitempty"`
	Actor       int    `json:"actor,omitempty"`
	Message     string `json:"message,omitempty"`
	Text        string `json:"text,omitempty"`
	Mentioned   []int  `json:"mentioned,omitempty"`
	MentionsAll bool   `json:"mentionsAll,omitempty"`
	Emoji       string `json:"emoji,omitempty"`
	Users       []int  `json:"users,omitempty"`

	// Of a send or a flush: the device, and the push of a send.
	User    int             `json:"user,omitempty"`
	Sub     string          `json:"sub,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

const group = "push"

type queue struct {
	rdb         redis.UniversalClient
	jobs, later string
	// subscribed and ready are the set of users with subscriptions and
	// the key that says it is whole.
	subscribed, ready string
	// queued starts the keys that mark an event's job as queued (see
	// addScript).
	queued string
}

func newQueue(rdb redis.UniversalClient, prefix string) *queue {
	return &queue{
		rdb: rdb, jobs: prefix + "{pushq}:jobs", later: prefix + "{pushq}:later",
		subscribed: prefix + "{pushq}:subscribed", ready: prefix + "{pushq}:subscribed:ready",
		queued: prefix + "{pushq}:queued:",
	}
}

// queuedFor is how long an event's job stays marked as queued: a send
// retried, or a reaction added again (however often), within it queues
// no second job, so that nobody gets the same push twice.
const queuedFor = 10 * time.Minute

// queuedKey is the mark of an event's job: the event's kind, chat and
// seq, and for a reaction its author and emoji.
func (q *queue) queuedKey(j *job) string {
	k := q.queued + j.Kind + ":" + j.Chat + ":" + strconv.FormatInt(j.Seq, 10)
	if j.Kind == KindReaction {
		k += ":" + strconv.Itoa(j.Actor) + ":" + j.Emoji
	}
	return k
}

// add queues the job for now in the pipeline.
func (q *queue) add(ctx context.Context, p redis.Pipeliner, j *job) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	p.XAdd(ctx, &redis.XAddArgs{Stream: q.jobs, Values: []any{"job", b}})
	return nil
}

// addScript queues the job ARGV[1] on the stream KEYS[1], answering {1,
// id}, or {0, the error} when Redis refuses it (a key of another type, no
// memory left): the error is the caller's to report, not the pipeline's
// (see addReported). When the set of subscribed users KEYS[2] is whole
// (KEYS[3] exists) and none of the recipients ARGV[3...] is in it, or
// when the event's job is marked as queued already (KEYS[4], kept ARGV[2]
// ms), the job is not queued, and the answer is {1, ""}.
var addScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[3]) == 1 then
  local any = false
  for i = 3, #ARGV do
    if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 1 then any = true; break end
  end
  if not any then return {1, ''} end
end
if not redis.call('SET', KEYS[4], 1, 'NX', 'PX', ARGV[2]) then return {1, ''} end
local r = redis.pcall('XADD', KEYS[1], '*', 'job', ARGV[1])
if type(r) == 'table' and r.err then
  redis.call('DEL', KEYS[4])
  return {0, r.err}
end
return {1, r}
`)

// addReported queues the encoded job for now in the pipeline, unless none
// of the recipients has a subscription, where an error of the queue does
// not fail the other commands' round trip: the caller looks at the
// command (reportedAdded). The script goes whole (EVAL), as a pipeline's
// EVALSHA fails when Redis forgot it.
func (q *queue) addReported(ctx context.Context, p redis.Pipeliner, j *job, encoded []byte) *redis.Cmd {
	recipients := j.recipients()
	args := make([]any, 2, 2+len(recipients))
	args[0], args[1] = encoded, queuedFor.Milliseconds()
	for _, u := range recipients {
		args = append(args, u)
	}
	return addScript.Eval(ctx, p, []string{q.jobs, q.subscribed, q.ready, q.queuedKey(j)}, args...)
}

// reportedAdded tells whether addReported's command queued its job.
func reportedAdded(c *redis.Cmd) bool {
	r, err := c.Slice()
	if err != nil || len(r) != 2 {
		return false
	}
	n, ok := r[0].(int64)
	return ok && n == 1
}

// addAll queues the jobs now for now, and each of later for its at, in
// one round trip.
func (q *queue) addAll(ctx context.Context, now, later []*job, at []time.Time) error {
	if len(now) == 0 && len(later) == 0 {
		return nil
	}
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, j := range now {
			if err := q.add(ctx, p, j); err != nil {
				return err
			}
		}
		for i, j := range later {
			b, err := json.Marshal(j)
			if err != nil {
				return err
			}
			p.ZAdd(ctx, q.later, redis.Z{Score: float64(at[i].UnixMilli()), Member: b})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("queue jobs: %w", err)
	}
	return nil
}

// addLater queues the job for at. The same job queued twice for later is
// there once.
func (q *queue) addLater(ctx context.Context, j *job, at time.Time) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	if err := q.rdb.ZAdd(ctx, q.later, redis.Z{Score: float64(at.UnixMilli()), Member: b}).Err(); err != nil {
		return fmt.Errorf("queue for later: %w", err)
	}
	return nil
}

// ensureGroup creates the stream and its consumer group, which reads it
// from the start, unless they exist.
func (q *queue) ensureGroup(ctx context.Context) error {
	err := q.rdb.XGroupCreateMkStream(ctx, q.jobs, group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create the consumer group: %w", err)
	}
	return nil
}

// moveScript moves up to ARGV[2] jobs of KEYS[1] (later) due by ARGV[1]
// (ms) to the stream KEYS[2].
var moveScript = redis.NewScript(`
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, j in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'job', j)
  redis.call('ZREM', KEYS[1], j)
end
return #due
`)

// moveDue moves the jobs whose time came to the stream.
func (q *queue) moveDue(ctx context.Context, now time.Time) (int, error) {
	n, err := moveScript.Run(ctx, q.rdb, []string{q.later, q.jobs}, now.UnixMilli(), 100).Int()
	if err != nil {
		return 0, fmt.Errorf("move due jobs: %w", err)
	}
	return n, nil
}

// done takes jobs off the stream.
func (q *queue) done(ctx context.Context, ids ...string) error {
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.XAck(ctx, q.jobs, group, ids...)
		p.XDel(ctx, q.jobs, ids...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("finish jobs: %w", err)
	}
	return nil
}

// dropIdleConsumers takes out of the consumer group the consumers with no
// pending job idle for longer than after.
func (q *queue) dropIdleConsumers(ctx context.Context, after time.Duration) error {
	consumers, err := q.rdb.XInfoConsumers(ctx, q.jobs, group).Result()
	if err != nil {
		return err
	}
	for _, c := range consumers {
		if c.Pending == 0 && c.Idle > after {
			if err := q.rdb.XGroupDelConsumer(ctx, q.jobs, group, c.Name).Err(); err != nil {
				return err
			}
		}
	}
	return nil
}
