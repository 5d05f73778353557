// Command parley-load puts a running Parley server under load through its
// public API and reports what clients would see.
//
// Scenarios:
//
//   - throughput (workload W1): -senders senders (default 16), each in a
//     private chat with a peer of its own, send -text-bytes messages
//     (default 200) as fast as their acks come, for -duration (default
//     20s), with client message ids and retries as a real client. It
//     reports acked sends a second, send latency percentiles, errors,
//     with -cpu-pids the server-side CPU per acked send, and with
//     -admin-url the server's calls to each store per acked send (read
//     from its /metrics before and after). With -seed-chats
//     and -seed-messages it first writes that many chats and messages
//     straight into the store (chat.Seed; needs -mongo-uri and
//     -redis-url), so that W1 runs against a big store; -after-seed runs
//     a command between the two.
//   - bigchat: -senders members of two groups send W1-style, in
//     alternating phases of -duration (-rounds of each), into a fresh
//     group and into one seeded with -big-messages messages (default
//     100,000; needs -mongo-uri and -redis-url), and it reports the ratio
//     of the two rates.
//   - delivery: -users subscribers, each with one live stream; the first
//     -group of them share a group that receives -group-rate messages a
//     second (from its first -group-senders members, or all), and the
//     others are paired in private chats that receive -private-rate
//     messages a second between them, sent by -senders workers for
//     -duration. It reports failed sends, send→receive latency
//     percentiles over every delivery (from the start of SendMessage),
//     publish→receive latency (from the time the server stamped on the
//     event as it published it: the live path alone; the tool must run on
//     the server's machine), the events missed and duplicated per stream,
//     and with -cpu-pids the server-side CPU per acked send. Workload W2
//     (one sender, 20 messages a second for 20 s into a group of 100
//     whose members all hold a stream):
//     -scenario delivery -users 100 -group 100 -group-senders 1
//     -group-rate 20 -private-rate 0 -duration 20s
//   - idle: -streams open streams spread over -users users, idle; it
//     reports the server's memory per open stream (from /proc of
//     -server-pid, so the server must run on this machine) and, with
//     -admin-url, its live heap and goroutine stacks per open stream,
//     each read after a garbage collection, which no memory freed
//     earlier (such as registration's password hashing) can blur, and with
//     -redis-url Redis's share. It opens the streams in five steps and
//     reads the memory after each. A user's
//     streams share one session: beyond 10 a user (the defaults give
//     exactly that), start the server with -live-max-streams-per-session
//     and -live-max-streams-per-user raised to match.
//   - media: uploads a file of -size bytes to a chat and downloads it as
//     the other member, -rounds times; it reports the throughput of each
//     and the server's peak memory above its idle level while each runs
//     (sampled every 20 ms from /proc of -server-pid). The file is
//     generated and checked (SHA-256) on the fly, never held whole.
//
// Each user talks over its own HTTP connection, as each device does
// (-conns user); -conns shared puts every user on one (with the default
// -protocol grpc, one HTTP/2 connection that carries every stream and
// send, where the server writes the frames of a fan-out one after
// another).
//
// -json FILE appends each measured phase's figures and samples (latencies,
// completions per second, memory per stream count) to FILE, one JSON
// object a line, named by -label; `make bench` gathers its runs this way
// for cmd/parley-benchreport. -profile FILE (with -admin-url) takes a CPU
// profile of the server over the measured window.
//
// -cpu-pids name=pid,... names server-side processes (for example
// parley=123,ferretdb=456,postgres=789,redis=1011); the CPU of each is
// that of the process and every process descended from it (all of a
// PostgreSQL's backends descend from its postmaster), including those
// that exit during the run, read from /proc before and after the measured
// window.
//
// Accounts are registered fresh each run (the server needs
// -registrations-per-address raised for that). The throughput, bigchat
// and delivery scenarios send far faster per user than people do: the
// server needs -send-rate 1000000 -send-burst 1000000 (its default
// allows 10 messages a second per user, bursts of 60), or what they
// measure is the limit. The tool sends traffic
// only to this machine (127.0.0.0/8, localhost, [::1]) unless
// -allow-remote.
//
//	go run ./cmd/parley-load -scenario throughput -cpu-pids parley=$(pgrep -n parley)
//	go run ./cmd/parley-load -scenario throughput -seed-chats 1000 -seed-messages 100000 \
//	    -mongo-uri mongodb://127.0.0.1:27017/ -redis-url redis://127.0.0.1:6379/0
//	go run ./cmd/parley-load -scenario bigchat -mongo-uri ... -redis-url ...
//	go run ./cmd/parley-load -scenario delivery -addr http://127.0.0.1:8080
//	go run ./cmd/parley-load -scenario idle -streams 10000 -server-pid $(pgrep -n parley)
//	go run ./cmd/parley-load -scenario media -size 200000000 -server-pid $(pgrep -n parley)
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/redisconn"
)

type config struct {
	addr        string
	protocol    string
	conns       string
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
	adminURL    string
	size        int64
	rounds      int

	groupSenders  int
	textBytes     int
	cpuPids       []cpuTarget
	seedChats     int
	seedMessages  int
	seedUsers     int
	seedGroup     int
	bigMessages   int
	mongoURI      string
	mongoDatabase string
	redisURL      string
	redisPrefix   string
	afterSeed     string
	allowRemote   bool
	jsonOut       string
	label         string
	profile       string
}

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "parley-load:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	var c config
	fs := flag.NewFlagSet("parley-load", flag.ContinueOnError)
	fs.StringVar(&c.addr, "addr", "http://127.0.0.1:8080", "server base `URL`")
	fs.StringVar(&c.protocol, "protocol", "grpc", "connect (HTTP/1.1), grpc (h2c) or grpcweb (HTTP/1.1)")
	fs.StringVar(&c.conns, "conns", "user", "`user`: each user its own HTTP connection, as each device has; shared: all users over one (with -protocol grpc, one HTTP/2 connection carrying every stream)")
	fs.StringVar(&c.scenario, "scenario", "delivery", "throughput, bigchat, delivery, idle or media")
	fs.IntVar(&c.users, "users", 1000, "users (delivery: each with one stream)")
	fs.IntVar(&c.group, "group", 100, "members of the busy group (delivery)")
	fs.IntVar(&c.groupSenders, "group-senders", 0, "how many of the group's members send to it, 0 for all (delivery)")
	fs.Float64Var(&c.groupRate, "group-rate", 20, "messages per second to the group (delivery)")
	fs.Float64Var(&c.privateRate, "private-rate", 20, "messages per second over all private chats (delivery)")
	fs.IntVar(&c.senders, "senders", 0, "sending workers (delivery, default 32), or closed-loop senders (throughput, bigchat; default 16)")
	fs.DurationVar(&c.duration, "duration", 0, "how long to send (delivery, default 60s; throughput, default 20s), or each phase (bigchat, default 20s)")
	fs.DurationVar(&c.drain, "drain", 10*time.Second, "how long to wait for the last deliveries (delivery)")
	fs.IntVar(&c.textBytes, "text-bytes", 200, "bytes of text per message (throughput, bigchat, and seeded messages)")
	cpuPids := fs.String("cpu-pids", "", "server-side processes whose CPU per acked send to report, as name=pid,... (throughput, bigchat, delivery)")
	fs.IntVar(&c.seedChats, "seed-chats", 0, "chats to write into the store before measuring (throughput)")
	fs.IntVar(&c.seedMessages, "seed-messages", 0, "messages to write into the store over the -seed-chats chats, in all (throughput)")
	fs.IntVar(&c.seedUsers, "seed-users", 0, "users to register for the seeded chats; 0: enough for distinct pairs (throughput)")
	fs.IntVar(&c.seedGroup, "seed-group", 0, "members of each seeded chat: 0 for private chats, more than 2 for groups (throughput)")
	fs.IntVar(&c.bigMessages, "big-messages", 100_000, "messages seeded into the big chat (bigchat)")
	fs.StringVar(&c.mongoURI, "mongo-uri", "", "the server's MongoDB `URI`, for seeding")
	fs.StringVar(&c.mongoDatabase, "mongo-database", "parley", "the server's MongoDB database, for seeding")
	fs.StringVar(&c.redisURL, "redis-url", "", "the server's Redis `URL`, for seeding")
	fs.StringVar(&c.redisPrefix, "redis-prefix", "parley:", "the server's Redis key prefix (its -redis-prefix), for seeding")
	fs.StringVar(&c.afterSeed, "after-seed", "", "shell `command` to run after seeding, before measuring: for example an ANALYZE of the document engine's PostgreSQL, which otherwise plans for the freshly loaded tables as if they were empty until autovacuum gets to them (throughput, bigchat)")
	fs.StringVar(&c.jsonOut, "json", "", "append each measured phase's figures and samples to this `file`, one JSON object a line (for cmd/parley-benchreport)")
	fs.StringVar(&c.label, "label", "", "a name for this run in the -json records (for example W1 or W2-100)")
	fs.StringVar(&c.profile, "profile", "", "write a CPU profile of the server over the measured window to this `file` (needs -admin-url; throughput, delivery)")
	fs.BoolVar(&c.allowRemote, "allow-remote", false, "allow -addr, -mongo-uri and -redis-url outside this machine")
	fs.IntVar(&c.streams, "streams", 10000, "open streams (idle)")
	fs.IntVar(&c.serverPID, "server-pid", 0, "the server's process id, to read its memory (idle, media)")
	fs.StringVar(&c.adminURL, "admin-url", "", "the server's admin listener (its -admin-addr, as http://127.0.0.1:9090), to read its live heap and stacks after a garbage collection (idle) and its store calls per send from /metrics (throughput)")
	fs.Int64Var(&c.size, "size", 200_000_000, "file size in bytes (media)")
	fs.IntVar(&c.rounds, "rounds", 0, "uploads and downloads (media, default 3), or rounds of fresh and big phases (bigchat, default 1)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if c.cpuPids, err = parseCPUPids(*cpuPids); err != nil {
		return err
	}
	if err := checkLoopback(c); err != nil {
		return err
	}
	if c.profile != "" && c.adminURL == "" {
		return errors.New("-profile needs -admin-url")
	}
	closedLoop := c.scenario == "throughput" || c.scenario == "bigchat"
	if c.senders == 0 {
		c.senders = 32
		if closedLoop {
			c.senders = 16
		}
	}
	if c.duration == 0 {
		c.duration = 60 * time.Second
		if closedLoop {
			c.duration = 20 * time.Second
		}
	}
	if c.rounds == 0 {
		c.rounds = 3
		if c.scenario == "bigchat" {
			c.rounds = 1
		}
	}
	if c.conns != "user" && c.conns != "shared" {
		return errors.New("-conns must be user or shared")
	}
	if c.textBytes <= 0 || c.senders <= 0 || c.rounds <= 0 || c.duration <= 0 {
		return errors.New("-text-bytes, -senders, -rounds and -duration must be positive")
	}
	if c.seedChats < 0 || c.seedMessages < 0 || (c.seedChats > 0) != (c.seedMessages > 0) {
		return errors.New("-seed-chats and -seed-messages go together")
	}
	switch c.scenario {
	case "throughput":
		return throughput(ctx, c)
	case "bigchat":
		return bigChat(ctx, c)
	case "delivery":
		return delivery(ctx, c)
	case "idle":
		return idle(ctx, c)
	case "media":
		return mediaTransfer(ctx, c)
	}
	return fmt.Errorf("unknown scenario %q", c.scenario)
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
				uc := hc
				if cfg.conns == "user" {
					uc = httpClient(cfg.protocol)
				}
				out[i] = &client{
					id:    res.Msg.GetMe().GetUser().GetId(),
					token: res.Msg.GetTokens().GetAccessToken(),
					chats: parleyv1connect.NewChatServiceClient(uc, cfg.addr, opts...),
					msgs:  parleyv1connect.NewMessageServiceClient(uc, cfg.addr, opts...),
					live:  parleyv1connect.NewLiveServiceClient(uc, cfg.addr, opts...),
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
	s, _, err := subscribeFrom(ctx, c, "")
	return s, err
}

// subscribeFrom opens a stream that resumes after cursor (none: live
// events only), waits for its ready event and returns the cursor it
// stands at.
func subscribeFrom(ctx context.Context, c *client, cursor string) (*connect.ServerStreamForClient[parleyv1.SubscribeResponse], string, error) {
	s, err := c.live.Subscribe(ctx, req(c, &parleyv1.SubscribeRequest{ResumeCursor: cursor}))
	if err != nil {
		return nil, "", err
	}
	for s.Receive() {
		if ev := s.Msg().GetEvent(); ev.GetReady() != nil {
			return s, ev.GetCursor(), nil
		}
	}
	return nil, "", fmt.Errorf("subscribe: stream ended before ready: %v", s.Err())
}

// sent is what the senders remember of a message.
type sent struct {
	due        time.Time // when the schedule wanted it sent
	at         time.Time // when a worker started sending it
	recipients int
}

func delivery(ctx context.Context, cfg config) error {
	if cfg.group > cfg.users {
		return errors.New("-group is larger than -users")
	}
	if cfg.groupSenders < 0 || cfg.groupSenders > cfg.group {
		return errors.New("-group-senders must be between 0 and -group")
	}
	groupSenders := cfg.groupSenders
	if groupSenders == 0 {
		groupSenders = cfg.group
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
		arrivals  []time.Time
		dups      atomic.Int64
		received  atomic.Int64
		got       = map[string]int{} // streams that received each message
	)
	streamCtx, stopStreams := context.WithCancel(ctx)
	defer stopStreams()
	var readers sync.WaitGroup
	var reconnects atomic.Int64
	for _, u := range users {
		s, cursor, err := subscribeFrom(streamCtx, u, "")
		if err != nil {
			return err
		}
		readers.Go(func() {
			seen := map[string]bool{}
			for {
				events := 0
				for s.Receive() {
					events++
					ev := s.Msg().GetEvent()
					if c := ev.GetCursor(); c != "" {
						cursor = c
					}
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
					arrivals = append(arrivals, now)
					if sm := messages[key]; sm != nil {
						latencies = append(latencies, now.Sub(sm.at))
						fanout = append(fanout, now.Sub(ev.GetTime().AsTime()))
					}
					mu.Unlock()
				}
				// The server ended the stream (one that falls behind is
				// closed, say): resume from the last cursor, as a client
				// does, until the run ends. What the log replays comes
				// before the ready event, and is read like the rest.
				if events == 0 {
					time.Sleep(100 * time.Millisecond) // refused: not at once again
				}
				for streamCtx.Err() == nil {
					var err error
					if s, err = u.live.Subscribe(streamCtx, req(u, &parleyv1.SubscribeRequest{ResumeCursor: cursor})); err == nil {
						reconnects.Add(1)
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if streamCtx.Err() != nil {
					return
				}
			}
		})
	}

	// Open-loop senders at the configured rates.
	fmt.Printf("sending for %s: group %.0f/s to %d members from %d of them, private %.0f/s over %d chats\n",
		cfg.duration, cfg.groupRate, cfg.group, groupSenders, cfg.privateRate, len(pairs))
	meter, err := startCPU(cfg.cpuPids)
	if err != nil {
		return err
	}
	type job struct {
		from   *client
		chatID string
		n      int
	}
	jobs := make(chan job, 10000)
	var sendErrs, retries atomic.Int64
	var sendLat []time.Duration
	var sendMu sync.Mutex
	var queued []time.Duration // from due to the start of sending
	var workers sync.WaitGroup
	var total int
	for range cfg.senders {
		workers.Go(func() {
			for j := range jobs {
				key := fmt.Sprintf("load-%d", j.n)
				start := time.Now()
				mu.Lock()
				messages[key].at = start
				wait := start.Sub(messages[key].due)
				mu.Unlock()
				sendMu.Lock()
				queued = append(queued, wait)
				sendMu.Unlock()
				// Like a client, retry a failed send with the same id
				// (the server keeps one message per id).
				_, failed, err := sendOnce(ctx, target{from: j.from, chatID: j.chatID}, key, "load "+strconv.Itoa(j.n))
				retries.Add(failed)
				if err != nil {
					sendErrs.Add(1)
					fmt.Fprintln(os.Stderr, "send:", err)
					if connect.CodeOf(err) == connect.CodeResourceExhausted {
						fmt.Fprintln(os.Stderr, sendLimitHint)
					}
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
			messages[fmt.Sprintf("load-%d", n)] = &sent{due: next, recipients: recipients}
			mu.Unlock()
			jobs <- job{from, chatID, n}
			next = next.Add(interval)
		}
	}
	sendStart := time.Now()
	profiled := startProfile(ctx, cfg, cfg.duration)
	var schedulers sync.WaitGroup
	schedulers.Go(func() {
		schedule(cfg.groupRate, func() (*client, string, int) {
			return users[mrand.IntN(groupSenders)], groupID, cfg.group
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
	sendSpan := time.Since(sendStart)
	if err := profiled(); err != nil {
		return err
	}

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
	sendMu.Lock()
	acked := int64(len(sendLat))
	sendMu.Unlock()
	cpu, err := meter.stop(acked)
	if err != nil {
		return err
	}

	mu.Lock()
	defer mu.Unlock()
	var missed int64
	for key, m := range messages {
		missed += int64(max(0, m.recipients-got[key]))
	}
	fmt.Printf("\nsent %d messages (%d failed after 4 attempts; %d attempts retried), %d deliveries expected\n",
		len(messages), sendErrs.Load(), retries.Load(), expected)
	fmt.Printf("delivered %d, missed %d, duplicated %d; streams resumed after the server ended them: %d\n",
		received.Load(), missed, dups.Load(), reconnects.Load())
	report("send→receive latency", latencies)
	report("publish→receive latency (the event's server time to arrival)", fanout)
	report("SendMessage round trip", sendLat)
	// With every worker busy, messages wait for one: the server did not
	// keep up with the offered rate (the latencies above start when a
	// worker picks the message up).
	report("wait for a free sending worker", queued)
	fmt.Printf("sending took %.1fs for a %s schedule: %.1f acked sends/s\n",
		sendSpan.Seconds(), cfg.duration, float64(acked)/sendSpan.Seconds())
	offsets := make([]time.Duration, len(arrivals))
	for i, a := range arrivals {
		offsets[i] = a.Sub(sendStart)
	}
	rec := record{Scenario: cfg.scenario, Phase: "delivery", LatencyMs: millis(latencies), PerSecond: perSecond(offsets, sendSpan)}
	fields := []field{
		{"send_span_s", sendSpan.Seconds(), 1}, {"queue_p99_ms", pctMs(queued, 0.99), 2},
		{"acked", float64(acked), 0}, {"failed", float64(sendErrs.Load()), 0}, {"expected", float64(expected), 0},
		{"delivered", float64(received.Load()), 0}, {"missed", float64(missed), 0}, {"duplicated", float64(dups.Load()), 0},
		{"resumed", float64(reconnects.Load()), 0},
		{"p50_ms", pctMs(latencies, 0.50), 2}, {"p99_ms", pctMs(latencies, 0.99), 2},
		{"fanout_p99_ms", pctMs(fanout, 0.99), 2},
		{"send_p50_ms", pctMs(sendLat, 0.50), 2}, {"send_p99_ms", pctMs(sendLat, 0.99), 2},
	}
	return result(cfg, rec, append(fields, cpuFields(cpu)...)...)
}

func report(what string, d []time.Duration) {
	if len(d) == 0 {
		fmt.Printf("%s: no samples\n", what)
		return
	}
	q := func(p float64) time.Duration { return percentile(d, p).Round(10 * time.Microsecond) }
	fmt.Printf("%s over %d samples: p50 %s, p90 %s, p99 %s, max %s\n", what, len(d), q(0.50), q(0.90), q(0.99), q(1))
}

func idle(ctx context.Context, cfg config) error {
	if cfg.serverPID == 0 {
		return errors.New("idle: set -server-pid to the server's process id")
	}
	var rdb redis.UniversalClient
	if cfg.redisURL != "" {
		var err error
		if rdb, err = redisconn.Open(ctx, cfg.redisURL); err != nil {
			return fmt.Errorf("-redis-url: %w", err)
		}
		defer rdb.Close()
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
	measure := func() (memPoint, error) {
		p := memPoint{Streams: len(open)}
		var err error
		if p.Live, err = liveMemory(ctx, cfg.adminURL); err != nil {
			return p, err
		}
		p.Redis, err = redisMemory(ctx, rdb)
		return p, err
	}
	base, err := measure()
	if err != nil {
		return err
	}
	points := []memPoint{base}
	n := cfg.streams - len(open)
	t0 := time.Now()
	// The rest in five steps, the memory read after each.
	for step := 1; step <= idleSteps; step++ {
		upTo := n * step / idleSteps
		var mu sync.Mutex
		var next atomic.Int64
		next.Store(int64(len(open) - users))
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for range 16 {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= upTo {
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
		if step == idleSteps {
			fmt.Printf("opened %d more streams in %.1fs\n", n, time.Since(t0).Seconds())
			// Let the server settle (heartbeats go out; nothing else
			// happens).
			time.Sleep(5 * time.Second)
		}
		p, err := measure()
		if err != nil {
			return err
		}
		points = append(points, p)
	}
	after, err := rss(cfg.serverPID)
	if err != nil {
		return err
	}
	fmt.Printf("server RSS with %d streams: %.1f MiB\n", len(open), float64(after)/(1<<20))
	rssPer := float64(after-before) / float64(n) / 1024
	fmt.Printf("memory per stream: %.1f KiB (RSS)\n", rssPer)
	last := points[len(points)-1]
	per := func(v func(memPoint) int64) float64 {
		return float64(v(last)-v(base)) / float64(last.Streams-base.Streams) / 1024
	}
	live, inRedis := per(func(p memPoint) int64 { return p.Live }), per(func(p memPoint) int64 { return p.Redis })
	if cfg.adminURL != "" {
		fmt.Printf("server live heap and stacks: %.1f MiB with %d streams, %.1f MiB with %d\n",
			float64(base.Live)/(1<<20), base.Streams, float64(last.Live)/(1<<20), last.Streams)
		fmt.Printf("live memory per stream: %.1f KiB (heap and stacks after a garbage collection)\n", live)
	}
	if rdb != nil {
		fmt.Printf("Redis memory per stream: %.2f KiB (used_memory)\n", inRedis)
	}
	return result(cfg, record{Scenario: cfg.scenario, Phase: "idle", Memory: points},
		field{"streams", float64(last.Streams), 0}, field{"users", float64(users), 0},
		field{"live_kib_per_stream", live, 2}, field{"redis_kib_per_stream", inRedis, 2},
		field{"total_kib_per_stream", live + inRedis, 2}, field{"rss_kib_per_stream", rssPer, 2})
}

// idleSteps is how many steps the idle scenario opens its streams in,
// reading the server's memory after each.
const idleSteps = 5

// redisMemory is Redis's used_memory, 0 without a client.
func redisMemory(ctx context.Context, rdb redis.UniversalClient) (int64, error) {
	if rdb == nil {
		return 0, nil
	}
	// Every master's on a cluster: its replicas hold copies.
	var mu sync.Mutex
	var total int64
	err := redisconn.ForEachPrimary(ctx, rdb, func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "memory").Result()
		if err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		for line := range strings.Lines(info) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				mu.Lock()
				total += n
				mu.Unlock()
				return err
			}
		}
		return errors.New("redis: no used_memory in INFO memory")
	})
	return total, err
}

// liveMemory asks the server's admin listener for a garbage collection
// (a heap profile with gc=1) and then for its memory statistics, and
// returns the bytes of live heap objects and goroutine stacks; 0 without
// an admin URL.
func liveMemory(ctx context.Context, adminURL string) (int64, error) {
	if adminURL == "" {
		return 0, nil
	}
	get := func(path string) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(adminURL, "/")+path, nil)
		if err != nil {
			return nil, err
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, fmt.Errorf("admin listener: %w", err)
		}
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		if err == nil && res.StatusCode != http.StatusOK {
			err = fmt.Errorf("admin listener: GET %s: %s", path, res.Status)
		}
		return body, err
	}
	if _, err := get("/debug/pprof/heap?gc=1"); err != nil {
		return 0, err
	}
	body, err := get("/debug/vars")
	if err != nil {
		return 0, err
	}
	var vars struct {
		MemStats struct {
			HeapAlloc  int64
			StackInuse int64
		} `json:"memstats"`
	}
	if err := json.Unmarshal(body, &vars); err != nil {
		return 0, fmt.Errorf("admin listener: /debug/vars: %w", err)
	}
	return vars.MemStats.HeapAlloc + vars.MemStats.StackInuse, nil
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
