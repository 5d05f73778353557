package live_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

// A subscriber that stops reading neither slows the sender nor the 50
// other subscribers; once its queue is full it is closed with
// RESOURCE_EXHAUSTED, and resumes from its cursor without losing a thing.
func TestSubscribe_SlowSubscriber(t *testing.T) {
	srv := servertest.New(t,
		// Small socket buffers, as on a slow link, so that the stuck
		// client's stream fills up after little data.
		servertest.WithSendBuffer(4096),
		servertest.WithConfig(func(c *app.Config) {
			c.Live.QueueSize = 32
			// The stuck client is not cut for being idle while the
			// others read; it must end by its queue filling.
			c.Live.WriteTimeout = time.Hour
		}),
	)
	p := servertest.Protocols[0]
	sender, stuck := newUser(t, srv, p), newUser(t, srv, p)
	var others []*user
	for range 50 {
		others = append(others, newUser(t, srv, p))
	}
	grp := group(t, sender, append(others, stuck)...)

	stuckStream := subscribe(t, stuck.with(servertest.SmallReceiveBuffer(4096), srv.URL), "")
	var streams []*stream
	for _, o := range others {
		streams = append(streams, subscribe(t, o, ""))
	}

	// 80 messages of 4,000 random (incompressible) bytes: far more than
	// the stuck client's socket buffers and queue hold. They go in rounds
	// of 16, each read by the others before the next: a subscriber that
	// reads stays less than a queue behind however slowly the machine
	// runs it, while the stuck one falls further behind with every round.
	const n, round = 80, 16
	var sent []string
	for len(sent) < n {
		from := len(sent)
		for i := from; i < from+round; i++ {
			text := make([]byte, 2990)
			rand.Read(text)
			sent = append(sent, send(t, sender, grp, fmt.Sprintf("%03d ", i)+base64.StdEncoding.EncodeToString(text)).GetId())
		}
		var wg sync.WaitGroup
		errs := make(chan error, len(streams))
		for i, s := range streams {
			wg.Go(func() {
				for j := from; j < len(sent); j++ {
					m, err := nextMessage(s)
					if err != nil {
						errs <- fmt.Errorf("subscriber %d, message %d: %w", i, j, err)
						return
					}
					if m.GetId() != sent[j] {
						errs <- fmt.Errorf("subscriber %d got message %d out of order", i, j)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}

	// The stuck client reads again: what was buffered, then the error.
	var got []string
	var err error
	for {
		var m *parleyv1.Message
		if m, err = nextMessage(stuckStream); err != nil {
			break
		}
		got = append(got, m.GetId())
	}
	t.Logf("the stuck client got %d messages, then %v", len(got), err)
	servertest.WantCode(t, err, connect.CodeResourceExhausted)
	if len(got) >= n {
		t.Fatalf("the stuck client got all %d messages: its queue never filled", len(got))
	}
	resumeRest(t, stuck, stuckStream.cursor, got, sent)
}

// A subscriber whose client takes nothing for the write timeout is cut
// by the write watch, over HTTP/1.1 (the connection's socket full) and
// HTTP/2 (the stream's flow-control window closed), while its queue
// still has room: its user goes offline, the others go on, and it
// resumes from its cursor without losing a thing.
func TestSubscribe_StuckClientCut(t *testing.T) {
	// Long enough that the readers (the other subscriber, the test) are
	// never cut on a slow machine.
	const timeout = 3 * time.Second
	srv := servertest.New(t,
		servertest.WithSendBuffer(4096),
		servertest.WithConfig(func(c *app.Config) {
			c.Live.QueueSize = 1000 // far more than is sent: only the watch can end the stream
			c.Live.WriteTimeout = timeout
		}),
	)
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	stuckClients := []struct {
		name string
		hc   connect.HTTPClient
		opts []connect.ClientOption
	}{
		{"http1", servertest.SmallReceiveBuffer(4096), nil},
		{"h2c", &http.Client{Transport: &http.Transport{Protocols: &h2c, HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerStream: 16 << 10, MaxReceiveBufferPerConnection: 64 << 10,
		}}}, []connect.ClientOption{connect.WithGRPC()}},
	}
	for _, sc := range stuckClients {
		t.Run(sc.name, func(t *testing.T) {
			p := servertest.Protocols[1]
			sender, stuck, other := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			grp := group(t, sender, other, stuck)
			stuckStream := subscribe(t, stuck.with(sc.hc, srv.URL, sc.opts...), "")
			otherStream := subscribe(t, other, "")
			otherStream.presence = true
			bound := time.AfterFunc(30*time.Second, otherStream.close)
			defer bound.Stop()

			// 40 messages of 4,000 random (incompressible) bytes: far
			// more than the stuck client's buffers or window hold.
			const n = 40
			start := time.Now()
			var sent []string
			for i := range n {
				text := make([]byte, 2990)
				rand.Read(text)
				sent = append(sent, send(t, sender, grp, fmt.Sprintf("%03d ", i)+base64.StdEncoding.EncodeToString(text)).GetId())
			}
			got, offline := 0, false
			for got < n || !offline {
				ev, err := otherStream.tryNext()
				if err != nil {
					t.Fatalf("the other subscriber, %d messages in, stuck user offline: %v: %v", got, offline, err)
				}
				if m := ev.GetMessageCreated().GetMessage(); m != nil {
					if m.GetId() != sent[got] {
						t.Fatalf("the other subscriber got message %d out of order", got)
					}
					got++
				}
				if pr := ev.GetPresence(); pr != nil && pr.GetUserId() == stuck.id && !pr.GetOnline() {
					// The stuck user's only stream ended.
					if d := time.Since(start); d < timeout {
						t.Fatalf("the stuck stream was cut %s after the first send, before the write timeout (%s)", d, timeout)
					}
					offline = true
				}
			}

			// The stuck client reads again: what was buffered, then the
			// end of the stream.
			var ids []string
			for {
				m, err := nextMessage(stuckStream)
				if err != nil {
					t.Logf("the stuck client got %d messages, then %v", len(ids), err)
					break
				}
				ids = append(ids, m.GetId())
			}
			if len(ids) >= n {
				t.Fatalf("the stuck client got all %d messages: it was never stuck", len(ids))
			}
			resumeRest(t, stuck, stuckStream.cursor, ids, sent)
		})
	}
}

// resumeRest resumes u's stream from cursor and checks that got, the
// messages its ended stream delivered, and those the resumed one does are
// sent, in order.
func resumeRest(t *testing.T, u *user, cursor string, got, sent []string) {
	t.Helper()
	resumed := subscribe(t, u, cursor)
	for len(got) < len(sent) {
		got = append(got, resumed.message().GetId())
	}
	for i := range sent {
		if got[i] != sent[i] {
			t.Fatalf("after resuming, message %d is not the one sent %d-th", i, i)
		}
	}
}

func nextMessage(s *stream) (*parleyv1.Message, error) {
	for {
		ev, err := s.tryNext()
		if err != nil {
			return nil, err
		}
		if m := ev.GetMessageCreated().GetMessage(); m != nil {
			return m, nil
		}
	}
}

// Redis restarts, losing everything, while streams are open and messages
// are being sent: every client either goes on without a gap or gets the
// explicit re-sync error, and re-syncs; no acknowledged message is missed.
func TestSubscribe_RedisRestart(t *testing.T) {
	rs := servertest.StartRedis(t)
	own := servertest.WithConfig(func(c *app.Config) { c.RedisURL = rs.URL() })
	a, b := servertest.New(t, own), servertest.New(t, own)
	p := servertest.Protocols[0]
	alice, bob, carol := newUser(t, a, p), newUser(t, a, p), newUser(t, b, p)
	grp := group(t, alice, bob, carol)
	readers := []*user{bob, carol}
	streams := []*stream{subscribe(t, bob, ""), subscribe(t, carol, "")}

	const total = 60
	acked := make(chan string, total)
	restarted := make(chan struct{})
	go func() {
		defer close(acked)
		for i := range total {
			if i == 20 {
				rs.Restart()
				close(restarted)
			}
			id := fmt.Sprintf("r%d", i)
			for {
				m, err := trySend(alice, grp, id, fmt.Sprint(i))
				if err == nil {
					acked <- m.GetId()
					break
				}
				if connect.CodeOf(err) == connect.CodeUnauthenticated {
					// Redis lost the session.
					relogin(alice)
				}
				time.Sleep(50 * time.Millisecond) // back off while Redis comes back
			}
		}
	}()

	var wg sync.WaitGroup
	results := make([]struct {
		seen    map[string]bool
		resyncs int
		err     error
	}, len(readers))
	for i, u := range readers {
		wg.Go(func() {
			r := &results[i]
			r.seen = map[string]bool{}
			s := streams[i]
			var lastSeq int64
			record := func(m *parleyv1.Message) {
				r.seen[m.GetId()] = true
				lastSeq = max(lastSeq, m.GetSeq())
			}
			deadline := time.Now().Add(90 * time.Second)
			for len(r.seen) < total && time.Now().Before(deadline) {
				m, err := nextMessage(s)
				if err == nil {
					record(m)
					continue
				}
				// The stream ended: resume from the cursor, or re-sync
				// when the server says events may be gone.
				for time.Now().Before(deadline) {
					relogin(u)
					var ns *stream
					if !isCursorExpired(err) {
						ns, err = trySubscribe(t, u, s.cursor)
					}
					if isCursorExpired(err) {
						r.resyncs++
						if ns, err = trySubscribe(t, u, ""); err == nil {
							var listed []*parleyv1.Message
							if listed, err = listAfter(u, grp, lastSeq); err == nil {
								for _, m := range listed {
									record(m)
								}
							}
						}
					}
					if err == nil {
						s = ns
						break
					}
					time.Sleep(50 * time.Millisecond) // back off while Redis comes back
				}
			}
			if len(r.seen) < total {
				r.err = fmt.Errorf("saw %d of %d messages", len(r.seen), total)
			}
		})
	}
	var all []string
	for id := range acked {
		all = append(all, id)
	}
	wg.Wait()
	<-restarted
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("reader %d: %v", i, r.err)
		}
		for _, id := range all {
			if !r.seen[id] {
				t.Fatalf("reader %d never saw acknowledged message %s", i, id)
			}
		}
		t.Logf("reader %d: %d re-syncs", i, r.resyncs)
	}
	// Every acknowledged message is in the chat.
	relogin(bob)
	listed, err := listAfter(bob, grp, 0)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, m := range listed {
		have[m.GetId()] = true
	}
	for _, id := range all {
		if !have[id] {
			t.Fatalf("acknowledged message %s is missing from ListMessages", id)
		}
	}
}

// relogin signs u in again if Redis lost its session.
func relogin(u *user) {
	if _, err := u.live.GetPresence(context.Background(), req(u, &parleyv1.GetPresenceRequest{UserIds: []int32{u.id}})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		return
	}
	res, err := u.auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: u.name, Password: servertest.Password}))
	if err == nil {
		u.token = res.Msg.GetTokens().GetAccessToken()
	}
}

func listAfter(u *user, chatID string, after int64) ([]*parleyv1.Message, error) {
	return servertest.ListMessagesAfter(u.msgs, u.token, chatID, after)
}

// Redis forgets its scripts (SCRIPT FLUSH; a replica promoted before it
// ran them forgets them too): a send to a group still puts the message
// in each member's log once, so that it arrives once, live and on
// resume.
func TestPublish_ScriptsForgotten(t *testing.T) {
	rs := servertest.StartRedis(t)
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) { c.RedisURL = rs.URL() }))
	p := servertest.Protocols[0]
	alice := newUser(t, srv, p)
	members := []*user{newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)}
	grp := group(t, alice, members...)
	streams := make([]*stream, len(members))
	for i, u := range members {
		streams[i] = subscribe(t, u, "")
	}
	first := send(t, alice, grp, "first")
	cursors := make([]string, len(members))
	for i, s := range streams {
		if got := s.message().GetId(); got != first.GetId() {
			t.Fatalf("member %d: message %s, want %s", i, got, first.GetId())
		}
		cursors[i] = s.cursor
	}

	opts, err := redis.ParseURL(rs.URL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	if err := rdb.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatalf("SCRIPT FLUSH: %v", err)
	}
	want := []string{send(t, alice, grp, "after").GetId(), send(t, alice, grp, "next").GetId()}

	check := func(what string, i int, s *stream) {
		t.Helper()
		for _, id := range want {
			if got := s.message().GetId(); got != id {
				t.Fatalf("member %d, %s: message %s, want %v once each, in order", i, what, got, want)
			}
		}
	}
	for i, s := range streams {
		check("live", i, s)
		check("resumed", i, subscribe(t, members[i], cursors[i]))
	}
}
