package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/chat"
)

// target is one closed-loop sender and the chat it sends to.
type target struct {
	from   *client
	chatID string
}

// burst is what one measured window of closed-loop sends saw.
type burst struct {
	acked    int64
	failed   int64 // sends given up after every attempt
	errors   int64 // attempts that failed, retried or not
	window   time.Duration
	latency  []time.Duration // first attempt to ack
	acks     []time.Duration // when each ack came, from the start
	cpu      string          // summary fields of the CPU report
	calls    []field         // store calls per acked send (with -admin-url)
	firstErr atomic.Pointer[error]
}

func (b *burst) rate() float64 { return float64(b.acked) / b.window.Seconds() }

// sendLimitHint explains refused sends: every sender here sends far more
// than the server's default per-user limit (10 a second, bursts of 60).
const sendLimitHint = "the server's per-user send limit refused sends: start it with -send-rate 1000000 -send-burst 1000000 (see README, Load tests)"

// sendAttempts is how often a send is tried before it counts as failed.
const sendAttempts = 5

// retryable reports whether a real client would send again after err.
func retryable(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeInternal,
		connect.CodeUnknown, connect.CodeAborted, connect.CodeResourceExhausted:
		return true
	}
	return false
}

// sendOnce sends one message as a client would: with a client message id,
// tried again with the same id (so the server keeps one message) after a
// retryable error, backing off a little each time. It returns the message
// and how many attempts failed.
func sendOnce(ctx context.Context, t target, key, text string) (*parleyv1.Message, int64, error) {
	var failed int64
	wait := 20 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := t.from.msgs.SendMessage(actx, req(t.from, &parleyv1.SendMessageRequest{
			ChatId: t.chatID, ClientMessageId: key, Text: text,
		}))
		cancel()
		if err == nil {
			return res.Msg.GetMessage(), failed, nil
		}
		failed++
		if attempt == sendAttempts || !retryable(err) || ctx.Err() != nil {
			return nil, failed, err
		}
		time.Sleep(wait)
		wait *= 2
	}
}

// messageText returns a text of n bytes.
func messageText(n int) string {
	const filler = "Parley load test message; the quick brown fox jumps over the lazy dog. "
	return strings.Repeat(filler, n/len(filler)+1)[:n]
}

// hammer has each target send as fast as its acks come, one message at a
// time, for d, and measures the sends and the server's CPU meanwhile.
func hammer(ctx context.Context, cfg config, targets []target, d time.Duration, tag string) (*burst, error) {
	text := messageText(cfg.textBytes)
	b := &burst{}
	var mu sync.Mutex
	meter, err := startCPU(cfg.cpuPids)
	if err != nil {
		return nil, err
	}
	var callsBefore map[string]float64
	if cfg.adminURL != "" {
		if callsBefore, err = storeCalls(ctx, cfg.adminURL); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	profiled := startProfile(ctx, cfg, d)
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w, t := range targets {
		wg.Go(func() {
			var lat, acks []time.Duration
			for n := 0; time.Now().Before(deadline); n++ {
				t0 := time.Now()
				_, failed, err := sendOnce(ctx, t, fmt.Sprintf("%s-%d-%d", tag, w, n), text)
				atomic.AddInt64(&b.errors, failed)
				if err != nil {
					atomic.AddInt64(&b.failed, 1)
					b.firstErr.CompareAndSwap(nil, &err)
					continue
				}
				now := time.Now()
				lat = append(lat, now.Sub(t0))
				acks = append(acks, now.Sub(start))
			}
			mu.Lock()
			b.latency = append(b.latency, lat...)
			b.acks = append(b.acks, acks...)
			mu.Unlock()
		})
	}
	wg.Wait()
	b.window = time.Since(start)
	if err := profiled(); err != nil {
		return nil, err
	}
	b.acked = int64(len(b.latency))
	if b.cpu, err = meter.stop(b.acked); err != nil {
		return nil, err
	}
	if callsBefore != nil {
		after, err := storeCalls(ctx, cfg.adminURL)
		if err != nil {
			return nil, err
		}
		b.calls = storeCallFields(callsBefore, after, b.acked)
	}
	return b, nil
}

// printBurst reports a burst, ending with one summary line of key=value
// fields, prefixed RESULT, for scripts (and its -json record).
func printBurst(cfg config, name string, b *burst) error {
	fmt.Printf("%s: %d acked sends in %.1fs: %.1f sends/s; %d failed after %d attempts, %d attempts failed\n",
		name, b.acked, b.window.Seconds(), b.rate(), b.failed, sendAttempts, b.errors)
	if e := b.firstErr.Load(); e != nil {
		fmt.Printf("  first error: %v\n", *e)
		if connect.CodeOf(*e) == connect.CodeResourceExhausted {
			fmt.Println("  " + sendLimitHint)
		}
	}
	report("  send latency (first attempt to ack)", b.latency)
	rec := record{Scenario: cfg.scenario, Phase: name, LatencyMs: millis(b.latency), PerSecond: perSecond(b.acks, b.window)}
	fields := []field{
		{"sends_per_s", b.rate(), 1}, {"p50_ms", pctMs(b.latency, 0.50), 2}, {"p99_ms", pctMs(b.latency, 0.99), 2},
		{"acked", float64(b.acked), 0}, {"failed", float64(b.failed), 0}, {"errors", float64(b.errors), 0},
	}
	fields = append(fields, b.calls...)
	return result(cfg, rec, append(fields, cpuFields(b.cpu)...)...)
}

// percentile returns the q-quantile (0 ≤ q ≤ 1) of d, 0 for none.
func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, max(0, int(math.Ceil(q*float64(len(s))))-1))]
}

// pctMs is percentile in milliseconds.
func pctMs(d []time.Duration, q float64) float64 {
	return float64(percentile(d, q)) / float64(time.Millisecond)
}

func runTag() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// warmUp sends a few messages from every target, outside any measure, so
// that connections, caches and the chats' first documents exist.
func warmUp(ctx context.Context, targets []target, tag string, n int) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(targets))
	for w, t := range targets {
		wg.Go(func() {
			for i := range n {
				if _, _, err := sendOnce(ctx, t, fmt.Sprintf("%s-warm-%d-%d", tag, w, i), "warm-up"); err != nil {
					errs <- fmt.Errorf("warm-up send: %w", err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// throughput is workload W1: -senders senders, each in a private chat
// with a peer of its own, sending -text-bytes messages as fast as the
// acks come for -duration; optionally after seeding the store.
func throughput(ctx context.Context, cfg config) error {
	if err := seedStore(ctx, cfg); err != nil {
		return err
	}
	fmt.Printf("registering %d users…\n", 2*cfg.senders)
	users, err := register(ctx, cfg, 2*cfg.senders)
	if err != nil {
		return err
	}
	targets := make([]target, cfg.senders)
	for i := range targets {
		a, b := users[2*i], users[2*i+1]
		res, err := a.chats.CreatePrivateChat(ctx, req(a, &parleyv1.CreatePrivateChatRequest{PeerId: b.id}))
		if err != nil {
			return fmt.Errorf("create private chat: %w", err)
		}
		targets[i] = target{a, res.Msg.GetChat().GetId()}
	}
	tag := runTag()
	if err := warmUp(ctx, targets, tag, 3); err != nil {
		return err
	}
	fmt.Printf("W1: %d senders, each in its own private chat, %d-byte messages, closed loop for %s\n",
		cfg.senders, cfg.textBytes, cfg.duration)
	b, err := hammer(ctx, cfg, targets, cfg.duration, tag)
	if err != nil {
		return err
	}
	return printBurst(cfg, "throughput", b)
}

// bigChat measures sends into one chat of -big-messages messages against
// sends into a fresh chat, the same -senders members sending to each, in
// alternating phases of -duration (-rounds of each), and reports the
// ratio of their rates.
func bigChat(ctx context.Context, cfg config) error {
	if cfg.senders < 2 {
		return errors.New("bigchat: -senders must be at least 2 (the members of the two groups)")
	}
	st, closeStores, err := openStores(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeStores()
	fmt.Printf("registering %d users…\n", cfg.senders)
	users, err := register(ctx, cfg, cfg.senders)
	if err != nil {
		return err
	}
	var others []int32
	for _, u := range users[1:] {
		others = append(others, u.id)
	}
	admin := users[0]
	newGroup := func(name string) (string, error) {
		g, err := admin.chats.CreateGroupChat(ctx, req(admin, &parleyv1.CreateGroupChatRequest{Name: name, MemberIds: others}))
		if err != nil {
			return "", fmt.Errorf("create group: %w", err)
		}
		return g.Msg.GetChat().GetId(), nil
	}
	bigID, err := newGroup("big")
	if err != nil {
		return err
	}
	freshID, err := newGroup("fresh")
	if err != nil {
		return err
	}
	fmt.Printf("seeding one chat with %d messages…\n", cfg.bigMessages)
	t0 := time.Now()
	res, err := chat.Seed(ctx, st.db, st.rdb, cfg.redisPrefix, chat.SeedSpec{
		ChatID: bigID, Messages: cfg.bigMessages, TextBytes: cfg.textBytes, Read: true,
	})
	if err != nil {
		return err
	}
	d := time.Since(t0)
	fmt.Printf("  seeded %d messages in %.1fs (%.0f/s)\n", res.Messages, d.Seconds(), float64(res.Messages)/d.Seconds())
	if err := checkContinues(ctx, admin, res.Chats[0]); err != nil {
		return err
	}
	if err := afterSeed(ctx, cfg); err != nil {
		return err
	}

	tag := runTag()
	targetsOf := func(chatID string) []target {
		ts := make([]target, len(users))
		for i, u := range users {
			ts[i] = target{u, chatID}
		}
		return ts
	}
	big, fresh := targetsOf(bigID), targetsOf(freshID)
	if err := warmUp(ctx, big, tag+"b", 1); err != nil {
		return err
	}
	if err := warmUp(ctx, fresh, tag+"f", 1); err != nil {
		return err
	}
	fmt.Printf("%d members each sending %d-byte messages closed loop into one group, %s per phase, %d round(s) of fresh then big\n",
		cfg.senders, cfg.textBytes, cfg.duration, cfg.rounds)
	var bigAcked, freshAcked int64
	var bigTime, freshTime time.Duration
	for r := range cfg.rounds {
		for _, ph := range []struct {
			name    string
			targets []target
			acked   *int64
			window  *time.Duration
		}{
			{"fresh-chat", fresh, &freshAcked, &freshTime},
			{"big-chat", big, &bigAcked, &bigTime},
		} {
			b, err := hammer(ctx, cfg, ph.targets, cfg.duration, fmt.Sprintf("%s-%s-%d", tag, ph.name, r))
			if err != nil {
				return err
			}
			if err := printBurst(cfg, ph.name, b); err != nil {
				return err
			}
			*ph.acked += b.acked
			*ph.window += b.window
		}
	}
	bigRate, freshRate := float64(bigAcked)/bigTime.Seconds(), float64(freshAcked)/freshTime.Seconds()
	fmt.Printf("\nbig chat (%d+ messages) %.1f sends/s, fresh chat %.1f sends/s: ratio big/fresh %.2f\n",
		cfg.bigMessages, bigRate, freshRate, bigRate/freshRate)
	return result(cfg, record{Scenario: cfg.scenario, Phase: "bigchat-ratio"},
		field{"big_per_s", bigRate, 1}, field{"fresh_per_s", freshRate, 1}, field{"ratio", bigRate / freshRate, 3})
}
