// Command parley-load puts a running Parley server under load through its
// public API and reports what clients would see.
//
// Two scenarios:
//
//   - delivery: -users subscribers, each with one live stream; the first
//     -group of them share a group that receives -group-rate messages a
//     second, and the others are paired in private chats that receive
//     -private-rate messages a second between them, sent by -senders
//     workers for -duration. It reports send→receive latency
//     percentiles over every delivery (from the start of SendMessage),
//     publish→receive latency (from the time the server stamped on the
//     event as it published it: the live path alone; the tool must run on
//     the server's machine), and the events missed and duplicated per
//     stream.
//   - idle: -streams open streams spread over -users users, idle; it
//     reports the server's memory per open stream (from /proc of
//     -server-pid, so the server must run on this machine).
//   - media: uploads a file of -size bytes to a chat and downloads it as
//     the other member, -rounds times; it reports the throughput of each
//     and the server's peak memory above its idle level while each runs
//     (sampled every 20 ms from /proc of -server-pid). The file is
//     generated and checked (SHA-256) on the fly, never held whole.
//
// Accounts are registered fresh each run (the server needs
// -registrations-per-address raised for that).
//
//	go run ./cmd/parley-load -scenario delivery -addr http://127.0.0.1:8080
//	go run ./cmd/parley-load -scenario idle -streams 10000 -server-pid $(pgrep -n parley)
//	go run ./cmd/parley-load -scenario media -size 200000000 -server-pid $(pgrep -n parley)
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
)

type config struct {
	addr        string
	protocol    string
	scenario    string
	users       int
	group       int
	groupRate   float64
	privateRate float64
	senders     int
	duration    time.Duration
	drain       time.Duration
	streams     int
	serverPID   int
	size        int64
	rounds      int
}

func main() {
	var c config
	flag.StringVar(&c.addr, "addr", "http://127.0.0.1:8080", "server base `URL`")
	flag.StringVar(&c.protocol, "protocol", "grpc", "connect (HTTP/1.1), grpc (h2c) or grpcweb (HTTP/1.1)")
	flag.StringVar(&c.scenario, "scenario", "delivery", "delivery, idle or media")
	flag.IntVar(&c.users, "users", 1000, "users (delivery: each with one stream)")
	flag.IntVar(&c.group, "group", 100, "members of the busy group (delivery)")
	flag.Float64Var(&c.groupRate, "group-rate", 20, "messages per second to the group (delivery)")
	flag.Float64Var(&c.privateRate, "private-rate", 20, "messages per second over all private chats (delivery)")
	flag.IntVar(&c.senders, "senders", 32, "sending workers (delivery)")
	flag.DurationVar(&c.duration, "duration", 60*time.Second, "how long to send (delivery)")
	flag.DurationVar(&c.drain, "drain", 10*time.Second, "how long to wait for the last deliveries (delivery)")
	flag.IntVar(&c.streams, "streams", 10000, "open streams (idle)")
	flag.IntVar(&c.serverPID, "server-pid", 0, "the server's process id, to read its memory (idle, media)")
	flag.Int64Var(&c.size, "size", 200_000_000, "file size in bytes (media)")
	flag.IntVar(&c.rounds, "rounds", 3, "uploads and downloads (media)")
	flag.Parse()
	ctx := context.Background()
	var err error
	switch c.scenario {
	case "delivery":
		err = delivery(ctx, c)
	case "idle":
		err = idle(ctx, c)
	case "media":
		err = mediaTransfer(ctx, c)
	default:
		err = fmt.Errorf("unknown scenario %q", c.scenario)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "parley-load:", err)
		os.Exit(1)
	}
}

// client is one signed-in user's set of service clients.
type client struct {
	id    int32
	token string
	chats parleyv1connect.ChatServiceClient
	msgs  parleyv1connect.MessageServiceClient
	live  parleyv1connect.LiveServiceClient
}

func httpClient(protocol string) *http.Client {
	t := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 1000,
	}
	if protocol == "grpc" {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		t.Protocols = &p
	}
	return &http.Client{Transport: t}
}

func clientOptions(protocol string) []connect.ClientOption {
	switch protocol {
	case "grpc":
		return []connect.ClientOption{connect.WithGRPC()}
	case "grpcweb":
		return []connect.ClientOption{connect.WithGRPCWeb()}
	}
	return nil
}

func req[T any](c *client, msg *T) *connect.Request[T] {
	r := connect.NewRequest(msg)
	r.Header().Set("Authorization", "Bearer "+c.token)
	return r
}

// register creates n users, 8 at a time.
func register(ctx context.Context, cfg config, n int) ([]*client, error) {
	hc := httpClient(cfg.protocol)
	opts := clientOptions(cfg.protocol)
	auth := parleyv1connect.NewAuthServiceClient(hc, cfg.addr, opts...)
	run := make([]byte, 4)
	rand.Read(run)
	tag := hex.EncodeToString(run)
	out := make([]*client, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				name := fmt.Sprintf("load_%s_%d", tag, i)
				res, err := auth.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{
					Username: name, Email: name + "@example.com", Password: "load test password " + tag,
				}))
				if err != nil {
					errs <- fmt.Errorf("register: %w", err)
					return
				}
				out[i] = &client{
					id:    res.Msg.GetMe().GetUser().GetId(),
					token: res.Msg.GetTokens().GetAccessToken(),
					chats: parleyv1connect.NewChatServiceClient(hc, cfg.addr, opts...),
					msgs:  parleyv1connect.NewMessageServiceClient(hc, cfg.addr, opts...),
					live:  parleyv1connect.NewLiveServiceClient(hc, cfg.addr, opts...),
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return out, nil
}

// subscribe opens a stream and waits for its ready event.
func subscribe(ctx context.Context, c *client) (*connect.ServerStreamForClient[parleyv1.SubscribeResponse], error) {
	s, err := c.live.Subscribe(ctx, req(c, &parleyv1.SubscribeRequest{}))
	if err != nil {
		return nil, err
	}
	for s.Receive() {
		if s.Msg().GetEvent().GetReady() != nil {
			return s, nil
		}
	}
	return nil, fmt.Errorf("subscribe: stream ended before ready: %v", s.Err())
}

// sent is what the senders remember of a message.
type sent struct {
	at         time.Time
	recipients int
}

func delivery(ctx context.Context, cfg config) error {
	if cfg.group > cfg.users {
		return errors.New("-group is larger than -users")
	}
	fmt.Printf("registering %d users…\n", cfg.users)
	t0 := time.Now()
	users, err := register(ctx, cfg, cfg.users)
	if err != nil {
		return err
	}
	fmt.Printf("  %.1fs\n", time.Since(t0).Seconds())

	// The busy group, and private chats pairing everyone else.
	admin := users[0]
	var members []int32
	for _, u := range users[1:cfg.group] {
		members = append(members, u.id)
	}
	g, err := admin.chats.CreateGroupChat(ctx, req(admin, &parleyv1.CreateGroupChatRequest{Name: "load", MemberIds: members}))
	if err != nil {
		return fmt.Errorf("create group: %w", err)
	}
	groupID := g.Msg.GetChat().GetId()
	type pair struct {
		a, b   *client
		chatID string
	}
	var pairs []pair
	for i := cfg.group; i+1 < len(users); i += 2 {
		a, b := users[i], users[i+1]
		res, err := a.chats.CreatePrivateChat(ctx, req(a, &parleyv1.CreatePrivateChatRequest{PeerId: b.id}))
		if err != nil {
			return fmt.Errorf("create private chat: %w", err)
		}
		pairs = append(pairs, pair{a, b, res.Msg.GetChat().GetId()})
	}

	// Every user's stream.
	fmt.Printf("opening %d streams…\n", len(users))
	var (
		mu        sync.Mutex
		messages  = map[string]*sent{} // by client message id
		latencies []time.Duration
		fanout    []time.Duration
		dups      atomic.Int64
		received  atomic.Int64
		got       = map[string]int{} // streams that received each message
	)
	streamCtx, stopStreams := context.WithCancel(ctx)
	defer stopStreams()
	var readers sync.WaitGroup
	for _, u := range users {
		s, err := subscribe(streamCtx, u)
		if err != nil {
			return err
		}
		readers.Go(func() {
			seen := map[string]bool{}
			for s.Receive() {
				ev := s.Msg().GetEvent()
				m := ev.GetMessageCreated().GetMessage()
				if m == nil {
					continue
				}
				now := time.Now()
				key := m.GetClientMessageId()
				if seen[key] {
					dups.Add(1)
					continue
				}
				seen[key] = true
				received.Add(1)
				mu.Lock()
				got[key]++
				if sm := messages[key]; sm != nil {
					latencies = append(latencies, now.Sub(sm.at))
					fanout = append(fanout, now.Sub(ev.GetTime().AsTime()))
				}
				mu.Unlock()
			}
		})
	}

	// Open-loop senders at the configured rates.
	fmt.Printf("sending for %s: group %.0f/s to %d members, private %.0f/s over %d chats\n",
		cfg.duration, cfg.groupRate, cfg.group, cfg.privateRate, len(pairs))
	type job struct {
		from   *client
		chatID string
		n      int
	}
	jobs := make(chan job, 10000)
	var sendErrs, retries atomic.Int64
	var sendLat []time.Duration
	var sendMu sync.Mutex
	var workers sync.WaitGroup
	var total int
	for range cfg.senders {
		workers.Go(func() {
			for j := range jobs {
				key := fmt.Sprintf("load-%d", j.n)
				start := time.Now()
				mu.Lock()
				messages[key].at = start
				mu.Unlock()
				// Like a client, retry a failed send with the same id
				// (the server keeps one message per id).
				var err error
				for range 4 {
					_, err = j.from.msgs.SendMessage(ctx, req(j.from, &parleyv1.SendMessageRequest{
						ChatId: j.chatID, ClientMessageId: key, Text: "load " + strconv.Itoa(j.n),
					}))
					if err == nil {
						break
					}
					retries.Add(1)
				}
				if err != nil {
					sendErrs.Add(1)
					fmt.Fprintln(os.Stderr, "send:", err)
					mu.Lock()
					delete(messages, key)
					mu.Unlock()
					continue
				}
				sendMu.Lock()
				sendLat = append(sendLat, time.Since(start))
				sendMu.Unlock()
			}
		})
	}
	schedule := func(rate float64, pick func() (*client, string, int)) {
		if rate <= 0 {
			return
		}
		interval := time.Duration(float64(time.Second) / rate)
		next := time.Now()
		end := next.Add(cfg.duration)
		for next.Before(end) {
			time.Sleep(time.Until(next))
			from, chatID, recipients := pick()
			mu.Lock()
			total++
			n := total
			messages[fmt.Sprintf("load-%d", n)] = &sent{recipients: recipients}
			mu.Unlock()
			jobs <- job{from, chatID, n}
			next = next.Add(interval)
		}
	}
	var schedulers sync.WaitGroup
	schedulers.Go(func() {
		schedule(cfg.groupRate, func() (*client, string, int) {
			return users[mrand.IntN(cfg.group)], groupID, cfg.group
		})
	})
	if len(pairs) > 0 {
		schedulers.Go(func() {
			schedule(cfg.privateRate, func() (*client, string, int) {
				p := pairs[mrand.IntN(len(pairs))]
				from := p.a
				if mrand.IntN(2) == 1 {
					from = p.b
				}
				return from, p.chatID, 2
			})
		})
	}
	schedulers.Wait()
	close(jobs)
	workers.Wait()

	// Wait for the last deliveries, then count.
	mu.Lock()
	var expected int64
	for _, m := range messages {
		expected += int64(m.recipients)
	}
	mu.Unlock()
	deadline := time.Now().Add(cfg.drain)
	for received.Load() < expected && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	stopStreams()
	readers.Wait()

	mu.Lock()
	defer mu.Unlock()
	var missed int64
	for key, m := range messages {
		missed += int64(max(0, m.recipients-got[key]))
	}
	fmt.Printf("\nsent %d messages (%d failed after 4 attempts; %d attempts retried), %d deliveries expected\n",
		len(messages), sendErrs.Load(), retries.Load(), expected)
	fmt.Printf("delivered %d, missed %d, duplicated %d\n", received.Load(), missed, dups.Load())
	report("send→receive latency", latencies)
	report("publish→receive latency (the event's server time to arrival)", fanout)
	report("SendMessage round trip", sendLat)
	return nil
}

func report(what string, d []time.Duration) {
	if len(d) == 0 {
		fmt.Printf("%s: no samples\n", what)
		return
	}
	slices.Sort(d)
	q := func(p float64) time.Duration {
		return d[int(math.Min(float64(len(d)-1), math.Ceil(p*float64(len(d)))-1))]
	}
	fmt.Printf("%s over %d samples: p50 %s, p90 %s, p99 %s, max %s\n", what, len(d),
		q(0.50).Round(10*time.Microsecond), q(0.90).Round(10*time.Microsecond),
		q(0.99).Round(10*time.Microsecond), d[len(d)-1].Round(10*time.Microsecond))
}

func idle(ctx context.Context, cfg config) error {
	if cfg.serverPID == 0 {
		return errors.New("idle: set -server-pid to the server's process id")
	}
	users := min(cfg.users, cfg.streams)
	fmt.Printf("registering %d users…\n", users)
	cs, err := register(ctx, cfg, users)
	if err != nil {
		return err
	}
	// One stream per user first, so that what follows measures streams,
	// not first-time costs.
	ctxStreams, stop := context.WithCancel(ctx)
	defer stop()
	var open []*connect.ServerStreamForClient[parleyv1.SubscribeResponse]
	for _, c := range cs {
		s, err := subscribe(ctxStreams, c)
		if err != nil {
			return err
		}
		open = append(open, s)
	}
	before, err := rss(cfg.serverPID)
	if err != nil {
		return err
	}
	fmt.Printf("server RSS with %d streams: %.1f MiB\n", len(open), float64(before)/(1<<20))
	n := cfg.streams - len(open)
	t0 := time.Now()
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				s, err := subscribe(ctxStreams, cs[i%len(cs)])
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				open = append(open, s)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	fmt.Printf("opened %d more streams in %.1fs\n", n, time.Since(t0).Seconds())
	// Let the server settle (heartbeats go out; nothing else happens).
	time.Sleep(5 * time.Second)
	after, err := rss(cfg.serverPID)
	if err != nil {
		return err
	}
	fmt.Printf("server RSS with %d streams: %.1f MiB\n", len(open), float64(after)/(1<<20))
	fmt.Printf("memory per stream: %.1f KiB\n", float64(after-before)/float64(n)/1024)
	return nil
}

// rss reads a process's resident set size in bytes.
func rss(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}
