package push

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/live"
)

// The tests of this file drive the service's parts directly, on the
// package's Redis, with fakes for the other services.

// SetTestRedis gives the package's internal tests their Redis.
func SetTestRedis(f func(t *testing.T) (redis.UniversalClient, string)) { testRedis = f }

// testRedis returns a client of the package's Redis (servertest's
// stores) and a key prefix of the test's own. The external tests set it:
// servertest imports this package.
var testRedis func(t *testing.T) (redis.UniversalClient, string)

// sessions answers that every session is open; ask, when set, is told
// of each question first.
type sessions struct{ ask func([]auth.Identity) }

func (s sessions) SessionsOpen(_ context.Context, ids []auth.Identity) ([]bool, error) {
	if s.ask != nil {
		s.ask(ids)
	}
	out := make([]bool, len(ids))
	for i := range out {
		out[i] = true
	}
	return out, nil
}

// closedSessions answers that the sessions named are closed.
type closedSessions struct {
	closed []string
	ask    func([]auth.Identity)
}

func (s closedSessions) SessionsOpen(_ context.Context, ids []auth.Identity) ([]bool, error) {
	if s.ask != nil {
		s.ask(ids)
	}
	out := make([]bool, len(ids))
	for i, id := range ids {
		out[i] = !slices.Contains(s.closed, id.SessionID)
	}
	return out, nil
}

type offline struct{}

func (offline) Online(_ context.Context, ids []int) ([]bool, error) {
	return make([]bool, len(ids)), nil
}

// oneGroup is a group of users 1 and 2, where 1 sent every message.
type oneGroup struct{}

func (oneGroup) PushChat(context.Context, string, []int) (chat.PushChat, bool, error) {
	return chat.PushChat{Type: "group", Title: "g", Members: []int{1, 2}}, true, nil
}
func (oneGroup) MessageSender(context.Context, string, string) (int, bool, error) {
	return 1, true, nil
}

// deletedMessages is oneGroup where the message "gone" was deleted.
type deletedMessages struct{ oneGroup }

func (deletedMessages) MessageSender(_ context.Context, _, id string) (int, bool, error) {
	return 1, id != "gone", nil
}

type names struct{}

func (names) Name(context.Context, int) (string, error) { return "one", nil }

// provider records the pushes; answer, when set, decides each.
type provider struct {
	mu       sync.Mutex
	sent     []Subscription
	payloads []Payload
	answer   func(ctx context.Context) (Result, error)
}

func (p *provider) Send(ctx context.Context, sub Subscription, payload []byte, _ Options) (Result, error) {
	var pl Payload
	_ = json.Unmarshal(payload, &pl)
	p.mu.Lock()
	p.sent = append(p.sent, sub)
	p.payloads = append(p.payloads, pl)
	answer := p.answer
	p.mu.Unlock()
	if answer != nil {
		return answer(ctx)
	}
	return Result{Status: 201}, nil
}

func (p *provider) sends() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.sent)
}

func newTestService(t *testing.T, prov Provider, cfg Config) (*Service, redis.UniversalClient) {
	t.Helper()
	rdb, prefix := testRedis(t)
	cfg.Provider, cfg.PublicKey, cfg.RedisPrefix = prov, "k", prefix
	if cfg.Poll == 0 {
		cfg.Poll = 20 * time.Millisecond
	}
	s, err := New(slog.New(slog.NewTextHandler(io.Discard, nil)), rdb, offline{}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Use(sessions{}, oneGroup{}, names{})
	return s, rdb
}

// enqueue queues a job for now.
func (s *Service) enqueue(ctx context.Context, j *job) {
	if _, err := s.queue.rdb.Pipelined(ctx, func(p redis.Pipeliner) error { return s.queue.add(ctx, p, j) }); err != nil {
		panic(err)
	}
}

func register(t *testing.T, s *Service, uid int, endpoint, session string) *subRecord {
	t.Helper()
	r := &subRecord{ID: subscriptionID(endpoint), Session: session, Endpoint: endpoint, Created: time.Now().UnixMilli()}
	if ok, err := s.store.register(context.Background(), uid, r); err != nil || !ok {
		t.Fatalf("register: %v, %v", ok, err)
	}
	return r
}

// A fan-out queues one job per device, so that a slow push service holds
// a job no longer than one push: a fan-out to many devices that took
// longer than ClaimAfter was taken over while it ran, and done twice.
func TestFanOut_OneJobPerDevice(t *testing.T) {
	const devices = 5
	prov := &provider{answer: func(ctx context.Context) (Result, error) {
		select { // a push service that answers slowly
		case <-time.After(300 * time.Millisecond):
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
		return Result{Status: 201}, nil
	}}
	s, rdb := newTestService(t, prov, Config{Workers: 2, ClaimAfter: time.Second, Window: time.Minute})
	ctx := context.Background()
	for i := range devices {
		register(t, s, 2, "https://push.example/"+string(rune('a'+i)), "s")
	}
	if err := s.queue.ensureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	s.enqueue(ctx, &job{Type: jobEvent, Kind: KindMessage, Chat: "c", Seq: 1, Actor: 1, Message: "m", Users: []int{1, 2}})
	// Long enough for a job of all the devices' pushes (1.5 s) to be
	// taken over (after 1 s) and done again.
	run, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	s.Run(run)
	if got := prov.sends(); got != devices {
		t.Errorf("%d pushes, want %d", got, devices)
	}
	if n, err := rdb.ZCard(ctx, s.queue.later).Result(); err != nil || n != 0 {
		t.Errorf("%d jobs for later (%v), want none: the event was fanned out again, its pushes collapsed", n, err)
	}
}

// Each push gets Config.SendTimeout, and one that runs out of it is tried
// again.
func TestSend_Timeout(t *testing.T) {
	var calls atomic.Int32
	tried := make(chan error, 4)
	prov := &provider{answer: func(ctx context.Context) (Result, error) {
		calls.Add(1)
		<-ctx.Done() // a push service that never answers
		tried <- ctx.Err()
		return Result{}, ctx.Err()
	}}
	s, _ := newTestService(t, prov, Config{Workers: 1, SendTimeout: 100 * time.Millisecond, RetryBase: 10 * time.Millisecond, MaxAttempts: 2})
	register(t, s, 2, "https://push.example/slow", "s")
	ctx := context.Background()
	if err := s.queue.ensureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	s.enqueue(ctx, &job{Type: jobEvent, Kind: KindMessage, Chat: "c", Seq: 1, Actor: 1, Message: "m", Users: []int{1, 2}})
	run, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.Run(run); close(done) }()
	defer func() { cancel(); <-done }()
	for i := range 2 {
		select {
		case err := <-tried:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("try %d ended with %v, want its deadline", i+1, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("try %d never ended: a push has no timeout of its own", i+1)
		}
	}
}

// echoAfterTwice is the live delivery when Redis had forgotten its
// script: it runs after's commands twice (live.Hub.PublishWith).
type echoAfterTwice struct {
	chat.Events
	rdb redis.UniversalClient
}

func (e echoAfterTwice) PublishWith(ctx context.Context, _ []int, _ *parleyv1.Event, _, after func(redis.Pipeliner)) error {
	for range 2 {
		if _, err := e.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			if after != nil {
				after(p)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// messageEvent returns the event of a new message, each time another's
// (a message's job is queued once).
func messageEvent() *parleyv1.Event {
	seq := messageSeqs.Add(1)
	return &parleyv1.Event{Kind: &parleyv1.Event_MessageCreated{MessageCreated: &parleyv1.MessageEvent{
		Message: &parleyv1.Message{Id: "m" + strconv.FormatInt(seq, 10), ChatId: "c", Seq: seq, SenderId: 1, Text: "hi"},
	}}}
}

var messageSeqs atomic.Int64

// An event queues one push job, however many times the live delivery
// runs the caller's commands.
func TestEvents_QueuesOnce(t *testing.T) {
	s, rdb := newTestService(t, &provider{}, Config{Workers: -1})
	ctx := context.Background()
	ev := s.Events(echoAfterTwice{rdb: rdb})
	if err := ev.PublishWith(ctx, []int{1, 2}, messageEvent(), nil, nil); err != nil {
		t.Fatal(err)
	}
	if n, err := rdb.XLen(ctx, s.queue.jobs).Result(); err != nil || n != 1 {
		t.Fatalf("%d jobs queued (%v), want 1", n, err)
	}
}

// A push job the queue refuses costs the push, not the event: publishing
// succeeds, and the loss is counted.
func TestEvents_QueueFailureKeepsTheEvent(t *testing.T) {
	s, rdb := newTestService(t, &provider{}, Config{Workers: -1})
	ctx := context.Background()
	hub := live.NewHub(slog.New(slog.NewTextHandler(io.Discard, nil)), rdb, live.Config{Prefix: s.cfg.RedisPrefix})
	t.Cleanup(func() { hub.Close() })
	// The queue's key holds something else: every XADD to it fails.
	if err := rdb.Set(ctx, s.queue.jobs, "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	lost := counted(t, jobsLost)
	if err := s.Events(hub).PublishWith(ctx, []int{1, 2}, messageEvent(), nil, nil); err != nil {
		t.Fatalf("PublishWith: %v; want the event published without its push", err)
	}
	if got := counted(t, jobsLost) - lost; got != 1 {
		t.Fatalf("%v jobs counted lost, want 1", got)
	}
}

func counted(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// A subscription whose session ended is removed only as it was read: the
// same device registered meanwhile for another session stays.
func TestRemove_KeepsNewerRegistration(t *testing.T) {
	const endpoint = "https://push.example/device"
	ctx := context.Background()
	for name, remove := range map[string]func(s *Service) error{
		"worker": func(s *Service) error {
			sub, err := s.liveSubscription(ctx, 2, subscriptionID(endpoint))
			if sub != nil {
				t.Errorf("session A's subscription is live")
			}
			return err
		},
		"list": func(s *Service) error {
			_, err := s.liveSubscriptions(ctx, 2)
			return err
		},
		"fan-out": func(s *Service) error {
			return s.fanOut(ctx, &job{Type: jobEvent, Kind: KindMessage, Chat: "c", Seq: 1, Actor: 1, Message: "m", Users: []int{1, 2}})
		},
	} {
		t.Run(name, func(t *testing.T) {
			s, _ := newTestService(t, &provider{}, Config{Workers: -1})
			register(t, s, 2, endpoint, "A")
			// Session A turns out closed; while that is checked, the
			// device registers again, for session B.
			s.Use(closedSessions{closed: []string{"A"}, ask: func([]auth.Identity) {
				register(t, s, 2, endpoint, "B")
			}}, oneGroup{}, names{})
			if err := remove(s); err != nil {
				t.Fatal(err)
			}
			got, err := s.store.get(ctx, 2, subscriptionID(endpoint))
			if err != nil || got == nil || got.Session != "B" {
				t.Fatalf("subscription after removing session A's: %+v, %v; want session B's", got, err)
			}
		})
	}
	t.Run("session ended", func(t *testing.T) {
		s, _ := newTestService(t, &provider{}, Config{Workers: -1})
		register(t, s, 2, endpoint, "B")
		other := register(t, s, 2, "https://push.example/other", "A")
		s.SessionEnded(ctx, 2, "A")
		subs, err := s.store.list(ctx, 2)
		if err != nil || len(subs) != 1 || subs[0].Session != "B" {
			t.Fatalf("subscriptions after session A ended: %v, %v; want session B's alone (not %s)", subs, err, other.ID)
		}
	})
}

// The push a collapse window kept stays kept until it went: a flush cut
// short (the instance stopping) leaves it for the worker that takes the
// job over; one that fails for a while queues it again.
func TestFlush_KeptUntilSent(t *testing.T) {
	ctx := context.Background()
	prov := &provider{}
	s, rdb := newTestService(t, prov, Config{Workers: -1, Window: time.Minute})
	sub := register(t, s, 2, "https://push.example/device", "s")
	now := time.Now()
	first, latest := []byte(`{"kind":"message","seq":1}`), []byte(`{"kind":"message","seq":2}`)
	if due, err := s.store.collapse(ctx, 2, sub.ID, "c", KindMessage, now, time.Minute, first); err != nil || !due.IsZero() {
		t.Fatalf("collapse: %v, %v; want the first to go now", due, err)
	}
	if due, err := s.store.collapse(ctx, 2, sub.ID, "c", KindMessage, now, time.Minute, latest); err != nil || due.IsZero() {
		t.Fatalf("collapse: %v, %v; want the second to wait", due, err)
	}
	// Kept for as long as the push service would keep it, however long
	// the flush job waits in a backlog (the window's key lasted 80 s).
	if ttl, err := rdb.PTTL(ctx, s.store.windowKey(2, sub.ID, "c", KindMessage)).Result(); err != nil || ttl < messageTTL-time.Minute {
		t.Fatalf("the kept push lasts %v (%v), want %v", ttl, err, messageTTL)
	}
	flush := &job{Type: jobFlush, User: 2, Sub: sub.ID, Chat: "c"}

	// The instance stops during the push.
	stopping, stop := context.WithCancel(ctx)
	prov.answer = func(ctx context.Context) (Result, error) {
		stop()
		<-ctx.Done()
		return Result{}, ctx.Err()
	}
	if err := s.handle(stopping, flush); err == nil {
		t.Fatal("a flush cut short succeeded")
	}
	// A push service that fails for a while: the push goes back to the
	// queue.
	prov.answer = func(context.Context) (Result, error) { return Result{Retry: true, Status: 503}, errors.New("503") }
	if err := s.handle(ctx, flush); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if got := prov.sends(); got != 2 {
		t.Fatalf("%d pushes tried, want 2: the kept push was lost when the first flush was cut short", got)
	}
	later, err := rdb.ZRange(ctx, s.queue.later, 0, -1).Result()
	if err != nil || len(later) != 1 {
		t.Fatalf("jobs for later: %v, %v; want the push's retry", later, err)
	}
	var retry job
	if err := json.Unmarshal([]byte(later[0]), &retry); err != nil || retry.Type != jobSend || string(retry.Payload) != string(latest) {
		t.Fatalf("job for later %s (%v), want a send of the latest push", later[0], err)
	}
	// Queued again, the push is no longer the window's.
	if p, err := s.store.flush(ctx, 2, sub.ID, "c", KindMessage, now, time.Minute, time.Minute); err != nil || p != nil {
		t.Fatalf("the window still keeps %s (%v)", p, err)
	}
}

// An event none of whose recipients has a subscription queues no job,
// once the set of subscribed users is known whole; the set follows
// registrations and removals, and is rebuilt from the subscriptions when
// Redis lost it.
func TestEvents_SkipsUnsubscribedRecipients(t *testing.T) {
	s, rdb := newTestService(t, &provider{}, Config{Workers: -1})
	ctx := context.Background()
	hub := live.NewHub(slog.New(slog.NewTextHandler(io.Discard, nil)), rdb, live.Config{Prefix: s.cfg.RedisPrefix})
	t.Cleanup(func() { hub.Close() })
	ev := s.Events(hub)
	queued := func(users ...int) bool {
		t.Helper()
		before, err := rdb.XLen(ctx, s.queue.jobs).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		if err := ev.PublishWith(ctx, users, messageEvent(), nil, nil); err != nil {
			t.Fatal(err)
		}
		after, err := rdb.XLen(ctx, s.queue.jobs).Result()
		if err != nil {
			t.Fatal(err)
		}
		return after > before
	}
	// A subscription stored before the set existed (by an older
	// version): until the set is rebuilt, no event is skipped.
	if err := rdb.HSet(ctx, s.store.subsKey(3), "x", `{"id":"x","session":"s"}`).Err(); err != nil {
		t.Fatal(err)
	}
	if !queued(1, 4) {
		t.Fatal("an event was skipped before the set of subscribed users was whole")
	}
	if err := s.store.rebuildSubscribed(ctx); err != nil {
		t.Fatal(err)
	}
	if queued(1, 4, 5) {
		t.Error("an event to users without subscriptions queued a job")
	}
	if !queued(1, 3) {
		t.Error("an event to a user whose subscription predates the set queued no job")
	}
	// The actor's own subscription does not count.
	register(t, s, 1, "https://push.example/one", "A")
	if queued(1, 4) {
		t.Error("an event queued a job for its actor's own subscription")
	}
	sub := register(t, s, 4, "https://push.example/four", "B")
	if !queued(1, 4) {
		t.Error("an event to a user who registered queued no job")
	}
	if _, err := s.store.remove(ctx, 4, sub.ID); err != nil {
		t.Fatal(err)
	}
	if queued(1, 4) {
		t.Error("an event to a user who unregistered its only subscription queued a job")
	}
	// Redis lost the set: the ready mark went with it (a restart), and
	// the workers' rebuild brings back the users who have subscriptions.
	if err := rdb.Del(ctx, s.queue.subscribed, s.queue.ready).Err(); err != nil {
		t.Fatal(err)
	}
	if !queued(1, 5) {
		t.Error("an event was skipped while the set of subscribed users was lost")
	}
	if err := s.store.rebuildSubscribed(ctx); err != nil {
		t.Fatal(err)
	}
	if !queued(1, 3) || queued(1, 4, 5) {
		t.Error("after a rebuild, the set of subscribed users is not the users with subscriptions")
	}
	// A user a failed write left out of the set is back at the next
	// rebuild, within the hour the set is taken as whole.
	if ttl, err := rdb.PTTL(ctx, s.queue.ready).Result(); err != nil || ttl <= 0 || ttl > subscribedWholeFor {
		t.Errorf("the set is taken as whole for %v (%v), want at most %v", ttl, err, subscribedWholeFor)
	}
	if err := rdb.SRem(ctx, s.queue.subscribed, 3).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, s.queue.ready).Err(); err != nil { // its time is up
		t.Fatal(err)
	}
	if err := s.store.rebuildSubscribed(ctx); err != nil {
		t.Fatal(err)
	}
	if !queued(1, 3) {
		t.Error("a user left out of the set is still skipped after a rebuild")
	}
}

// A job that panics is dropped and logged, not retried, and the worker
// goes on: taken over, it would panic on each instance in turn.
func TestProcess_PanicDropsTheJob(t *testing.T) {
	ctx := context.Background()
	prov := &provider{answer: func(context.Context) (Result, error) { panic("a broken provider") }}
	s, rdb := newTestService(t, prov, Config{Workers: -1})
	sub := register(t, s, 2, "https://push.example/device", "s")
	raw, err := json.Marshal(&job{Type: jobSend, User: 2, Sub: sub.ID, Chat: "c", Payload: []byte(`{"kind":"message","seq":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	s.process(ctx, redis.XMessage{ID: "1-1", Values: map[string]any{"job": string(raw)}})
	if got := prov.sends(); got != 1 {
		t.Fatalf("%d pushes tried, want 1", got)
	}
	if n, err := rdb.ZCard(ctx, s.queue.later).Result(); err != nil || n != 0 {
		t.Fatalf("jobs for later: %d (%v), want none", n, err)
	}
}

// An endpoint on an address of the server's own networks is refused at
// registration, unless tests run their push service here.
func TestCheckEndpoint_PublicAddressesOnly(t *testing.T) {
	s := &Service{}
	for _, endpoint := range []string{
		"https://127.0.0.1/push/1", "https://10.0.0.5/push/1", "https://[::1]:8443/push/1",
		"https://169.254.169.254/latest", "https://[::ffff:192.168.1.1]/push",
	} {
		if err := s.checkEndpoint(endpoint); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("%s: %v, want invalid_argument", endpoint, err)
		}
	}
	for _, endpoint := range []string{"https://fcm.googleapis.com/fcm/send/x", "https://8.8.8.8/push", "https://[2001:4860::8888]/push"} {
		if err := s.checkEndpoint(endpoint); err != nil {
			t.Errorf("%s: %v, want it accepted", endpoint, err)
		}
	}
	s.cfg.InsecureEndpoints = true
	if err := s.checkEndpoint("http://127.0.0.1:8080/push/1"); err != nil {
		t.Errorf("with InsecureEndpoints, a local push service: %v", err)
	}
}

// An event's job is queued once: a send retried, or a reaction added
// again, pushes nobody twice; another emoji is another push.
func TestQueue_EventQueuedOnce(t *testing.T) {
	ctx := context.Background()
	s, rdb := newTestService(t, &provider{}, Config{Workers: -1})
	register(t, s, 2, "https://push.example/device", "s")
	queue := func(j *job) {
		t.Helper()
		b, err := json.Marshal(j)
		if err != nil {
			t.Fatal(err)
		}
		var c *redis.Cmd
		if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			c = s.queue.addReported(ctx, p, j, b)
			return nil
		}); err != nil || !reportedAdded(c) {
			t.Fatalf("queue: %v, %v", c.Val(), err)
		}
	}
	sent := &job{Type: jobEvent, Kind: KindMessage, Chat: "c", Seq: 7, Actor: 3, Users: []int{2, 3}}
	thumb := &job{Type: jobEvent, Kind: KindReaction, Chat: "c", Seq: 7, Actor: 2, Emoji: "👍", Users: []int{2, 3}}
	heart := &job{Type: jobEvent, Kind: KindReaction, Chat: "c", Seq: 7, Actor: 2, Emoji: "❤️", Users: []int{2, 3}}
	for _, j := range []*job{sent, sent, thumb, thumb, thumb, heart} {
		queue(j)
	}
	if n, err := rdb.XLen(ctx, s.queue.jobs).Result(); err != nil || n != 3 {
		t.Fatalf("%d jobs queued (%v), want 3", n, err)
	}
}

// A push of a message deleted since it was made (kept in a window, or
// retried) does not go.
func TestSend_DeletedMessageNotPushed(t *testing.T) {
	ctx := context.Background()
	prov := &provider{}
	s, _ := newTestService(t, prov, Config{Workers: -1})
	s.Use(sessions{}, deletedMessages{}, names{})
	sub := register(t, s, 2, "https://push.example/device", "s")
	push := func(id string) []byte {
		return []byte(`{"kind":"message","chat_id":"c","seq":1,"message_id":"` + id + `","preview":"oops ` + id + `"}`)
	}
	// Retries.
	for _, id := range []string{"gone", "here"} {
		if err := s.handle(ctx, &job{Type: jobSend, Attempt: 1, User: 2, Sub: sub.ID, Chat: "c", Payload: push(id)}); err != nil {
			t.Fatal(err)
		}
	}
	// A window's latest, deleted: the window may have kept others.
	for _, id := range []string{"first", "gone"} {
		if _, err := s.store.collapse(ctx, 2, sub.ID, "c", KindMessage, time.Now(), time.Minute, push(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.handle(ctx, &job{Type: jobFlush, User: 2, Sub: sub.ID, Chat: "c"}); err != nil {
		t.Fatal(err)
	}
	prov.mu.Lock()
	defer prov.mu.Unlock()
	if len(prov.payloads) != 2 || prov.payloads[0].Preview != "oops here" ||
		prov.payloads[1].Preview != "" || prov.payloads[1].MessageID != "" || prov.payloads[1].Seq != 1 {
		t.Fatalf("pushes %+v; want the retry of the message not deleted, then the window's end without the deleted text", prov.payloads)
	}
}
