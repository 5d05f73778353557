package live_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"google.golang.org/protobuf/proto"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

// A subscriber on one instance gets what is sent through another, on each
// protocol; every device of a user gets the user's own sends; ticks move
// live.
func TestSubscribe_AcrossInstances(t *testing.T) {
	a, b := servertest.New(t), servertest.New(t)
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			alice := newUser(t, a, p)
			bob := newUser(t, a, p).on(b, p)
			bobStream := subscribe(t, bob, "")
			aliceOther := subscribe(t, alice.on(b, p), "") // alice's second device

			chatID := private(t, alice, bob)
			created := bobStream.next().GetChatCreated()
			if created.GetChat().GetId() != chatID || created.GetActorId() != alice.id {
				t.Fatalf("first event = %v, want chat_created of %s by %d", created, chatID, alice.id)
			}

			sent := send(t, alice, chatID, "hello from A")
			for name, s := range map[string]*stream{"bob on B": bobStream, "alice's other device": aliceOther} {
				got := s.message()
				if got.GetId() != sent.GetId() || got.GetText() != "hello from A" || got.GetSeq() != sent.GetSeq() {
					t.Fatalf("%s got %v, want %v", name, got, sent)
				}
			}

			// Bob reads on B: alice's stream on A sees the tick.
			aliceStream := subscribe(t, alice, "")
			if _, err := bob.msgs.MarkRead(context.Background(), req(bob, &parleyv1.MarkReadRequest{ChatId: chatID, UpToSeq: sent.GetSeq()})); err != nil {
				t.Fatalf("MarkRead: %v", err)
			}
			for {
				ev := aliceStream.next()
				if pc := ev.GetPositionsChanged(); pc != nil {
					if pc.GetUserId() != bob.id || pc.GetChatReadSeq() != sent.GetSeq() || pc.GetChatDeliveredSeq() != sent.GetSeq() {
						t.Fatalf("positions_changed = %v, want bob's read and the chat read up to %d", pc, sent.GetSeq())
					}
					if ev.GetCursor() == "" {
						t.Fatal("positions_changed has no cursor")
					}
					break
				}
			}
		})
	}
}

// A client that reconnects with its last cursor, to either instance, gets
// every event after it exactly once and in order, then live ones, even
// while messages keep coming during the replay.
func TestSubscribe_Resume(t *testing.T) {
	a, b := servertest.New(t), servertest.New(t)
	p := servertest.Protocols[0]
	alice, bob, carol := newUser(t, a, p), newUser(t, a, p), newUser(t, a, p)
	dm := private(t, alice, bob)
	grp := group(t, alice, bob, carol)

	first := subscribe(t, bob.on(b, p), "")
	cursor := first.cursor
	first.close()

	// 100 messages to bob's chats while he is away.
	var want []string
	for i := range 100 {
		chatID := dm
		if i%2 == 1 {
			chatID = grp
		}
		want = append(want, send(t, alice, chatID, fmt.Sprintf("away %d", i)).GetId())
	}

	for _, on := range []*servertest.Server{a, b} {
		// Resuming from the same cursor on either instance gives the
		// same events, then live ones, while carol sends 20 more.
		var during []string
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := range 20 {
				during = append(during, send(t, carol, grp, fmt.Sprintf("during %d", i)).GetId())
			}
		})
		s := subscribe(t, bob.on(on, p), cursor)
		if !s.ready.GetResumed() || s.ready.GetReplayed() < 100 {
			t.Fatalf("ready = %v, want resumed with at least 100 replayed", s.ready)
		}
		wg.Wait()
		want = append(want, during...)
		var got []string
		for len(got) < len(want) {
			got = append(got, s.message().GetId())
		}
		// Sends were sequential, so the log holds them in send order.
		if !slices.Equal(got, want) {
			t.Fatalf("resumed stream got %d messages not exactly once in send order (want %d)", len(got), len(want))
		}
		s.close()
	}
}

// Streams carry events in the log's order with no gap across the replay
// and live hand-over: a stream opened from a cursor while a sender is busy
// gets each message exactly once, in the order of the sender's seqs.
func TestSubscribe_HandOverWhileSending(t *testing.T) {
	a, b := servertest.New(t), servertest.New(t)
	p := servertest.Protocols[1]
	alice, bob := newUser(t, a, p), newUser(t, a, p)
	dm := private(t, alice, bob)
	start := subscribe(t, bob, "").cursor

	const total = 150
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range total {
			send(t, alice, dm, fmt.Sprintf("m%d", i))
		}
	}()
	// Open several streams from the same cursor while the sender runs,
	// on both instances.
	var streams []*stream
	for i := range 4 {
		srv := a
		if i%2 == 1 {
			srv = b
		}
		streams = append(streams, subscribe(t, bob.on(srv, p), start))
	}
	<-done
	for i, s := range streams {
		var last int64
		for n := range total {
			m := s.message()
			if m.GetSeq() <= last {
				t.Fatalf("stream %d: message %d has seq %d after %d", i, n, m.GetSeq(), last)
			}
			if m.GetText() != fmt.Sprintf("m%d", n) {
				t.Fatalf("stream %d: got %q, want m%d", i, m.GetText(), n)
			}
			last = m.GetSeq()
		}
	}
}

func TestSubscribe_BadCursor(t *testing.T) {
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) { c.Live.MaxEvents = 10 }))
	p := servertest.Protocols[0]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)

	for _, c := range []string{"abc", "1-2-3", "-1", strings.Repeat("9", 30) + "-1"} {
		_, err := trySubscribe(t, bob, c)
		servertest.WantCode(t, err, connect.CodeInvalidArgument)
	}
	// A cursor the log never held.
	if _, err := trySubscribe(t, bob, "1-0"); !isCursorExpired(err) {
		t.Fatalf("unknown cursor: err = %v, want FAILED_PRECONDITION with reason CURSOR_EXPIRED", err)
	}
	if _, err := trySubscribe(t, bob, "99999999999999-0"); !isCursorExpired(err) {
		t.Fatalf("future cursor: err = %v, want the re-sync error", err)
	}

	// A cursor the log trimmed: the log keeps about 10 events (whole
	// blocks of 100 are trimmed), so 150 later events push it out.
	old := subscribe(t, bob, "").cursor
	dm := private(t, alice, bob)
	for i := range 150 {
		send(t, alice, dm, fmt.Sprint(i))
	}
	if _, err := trySubscribe(t, bob, old); !isCursorExpired(err) {
		t.Fatalf("trimmed cursor: err = %v, want the re-sync error", err)
	}
	// A recent cursor still resumes.
	recent := subscribe(t, bob, "").cursor
	send(t, alice, dm, "after")
	if m := subscribe(t, bob, recent).message(); m.GetText() != "after" {
		t.Fatalf("resumed from a recent cursor and got %q", m.GetText())
	}
}

// A removed member's streams stop carrying the chat's events from the
// removal on; an added member gets them from the next one.
func TestSubscribe_Membership(t *testing.T) {
	srv := servertest.New(t)
	p := servertest.Protocols[2]
	alice, bob, carol := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
	grp := group(t, alice, bob)
	dm := private(t, alice, bob)
	bobStream := subscribe(t, bob, "")
	carolStream := subscribe(t, carol, "")

	if _, err := alice.chats.RemoveParticipant(context.Background(), req(alice, &parleyv1.RemoveParticipantRequest{ChatId: grp, UserId: bob.id})); err != nil {
		t.Fatalf("RemoveParticipant: %v", err)
	}
	if _, err := alice.chats.AddParticipants(context.Background(), req(alice, &parleyv1.AddParticipantsRequest{ChatId: grp, UserIds: []int32{carol.id}})); err != nil {
		t.Fatalf("AddParticipants: %v", err)
	}
	send(t, alice, grp, "bob is gone, carol is here")
	// The log is ordered: had bob got the group message, it would come
	// before this one.
	send(t, alice, dm, "private")

	for {
		ev := bobStream.next()
		if r := ev.GetMemberRemoved(); r != nil {
			if r.GetChat().GetId() != grp || !slices.Equal(r.GetUserIds(), []int32{bob.id}) {
				t.Fatalf("member_removed = %v", r)
			}
			continue
		}
		if m := ev.GetMessageCreated().GetMessage(); m != nil {
			if m.GetChatId() != dm {
				t.Fatalf("removed member got %q from the group", m.GetText())
			}
			break
		}
	}
	added := carolStream.next().GetMembersAdded()
	if added.GetChat().GetId() != grp || !slices.Equal(added.GetUserIds(), []int32{carol.id}) {
		t.Fatalf("carol's first event: members_added = %v", added)
	}
	if m := carolStream.message(); m.GetText() != "bob is gone, carol is here" {
		t.Fatalf("carol got %q", m.GetText())
	}
}

// Edits, deletes, renames and role changes reach the members live.
func TestSubscribe_ChangeEvents(t *testing.T) {
	srv := servertest.New(t)
	p := servertest.Protocols[0]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	grp := group(t, alice, bob)
	s := subscribe(t, bob, "")
	m := send(t, alice, grp, "first")
	ctx := context.Background()
	if _, err := alice.msgs.EditMessage(ctx, req(alice, &parleyv1.EditMessageRequest{ChatId: grp, MessageId: m.GetId(), Text: "edited"})); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.msgs.DeleteMessage(ctx, req(alice, &parleyv1.DeleteMessageRequest{ChatId: grp, MessageId: m.GetId()})); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.chats.UpdateChat(ctx, req(alice, &parleyv1.UpdateChatRequest{ChatId: grp, Name: proto.String("renamed")})); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.chats.SetParticipantRole(ctx, req(alice, &parleyv1.SetParticipantRoleRequest{ChatId: grp, UserId: bob.id, Role: parleyv1.Role_ROLE_ADMIN})); err != nil {
		t.Fatal(err)
	}
	if got := s.message(); got.GetText() != "first" {
		t.Fatalf("created: %v", got)
	}
	if got := s.next().GetMessageEdited().GetMessage(); got.GetText() != "edited" || got.GetEditedAt() == nil {
		t.Fatalf("edited: %v", got)
	}
	if got := s.next().GetMessageDeleted().GetMessage(); !got.GetDeleted() || got.GetText() != "" {
		t.Fatalf("deleted: %v", got)
	}
	if got := s.next().GetChatUpdated().GetChat(); got.GetName() != "renamed" {
		t.Fatalf("updated: %v", got)
	}
	rc := s.next().GetRoleChanged()
	if !slices.Equal(rc.GetUserIds(), []int32{bob.id}) || roleOf(rc.GetChat(), bob.id) != parleyv1.Role_ROLE_ADMIN {
		t.Fatalf("role_changed: %v", rc)
	}
}

func roleOf(c *parleyv1.Chat, uid int32) parleyv1.Role {
	for _, p := range c.GetParticipants() {
		if p.GetUserId() == uid {
			return p.GetRole()
		}
	}
	return parleyv1.Role_ROLE_UNSPECIFIED
}

func TestSendTyping(t *testing.T) {
	srv := servertest.New(t)
	p := servertest.Protocols[0]
	alice, bob, eve := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
	dm := private(t, alice, bob)
	aliceStream := subscribe(t, alice, "")
	bobStream := subscribe(t, bob, "")
	ctx := context.Background()

	res, err := bob.msgs.SendTyping(ctx, req(bob, &parleyv1.SendTypingRequest{ChatId: dm, Typing: true}))
	if err != nil {
		t.Fatalf("SendTyping: %v", err)
	}
	// Then a message, so that the sender's own stream shows whether it got
	// its typing event (it must not).
	send(t, bob, dm, "typed")
	ev := aliceStream.next()
	ty := ev.GetTyping()
	if ty.GetUserId() != bob.id || ty.GetChatId() != dm || !ty.GetTyping() || ev.GetCursor() != "" {
		t.Fatalf("alice got %v, want bob typing without a cursor", ev)
	}
	if !ty.GetExpiresAt().AsTime().Equal(res.Msg.GetExpiresAt().AsTime()) ||
		ty.GetExpiresAt().AsTime().Before(time.Now()) {
		t.Fatalf("expires_at %v, response said %v", ty.GetExpiresAt().AsTime(), res.Msg.GetExpiresAt().AsTime())
	}
	if ev := bobStream.next(); ev.GetMessageCreated() == nil {
		t.Fatalf("bob's own stream got %v before his message", ev)
	}

	_, err = eve.msgs.SendTyping(ctx, req(eve, &parleyv1.SendTypingRequest{ChatId: dm, Typing: true}))
	servertest.WantCode(t, err, connect.CodeNotFound)
	_, err = bob.msgs.SendTyping(ctx, req(bob, &parleyv1.SendTypingRequest{ChatId: "nope"}))
	servertest.WantCode(t, err, connect.CodeInvalidArgument)

	// 10 per 10 seconds, refilled one a second: the first call above
	// counts, the next 9 pass, and calls beyond soon find the bucket empty.
	for range 9 {
		if _, err := bob.msgs.SendTyping(ctx, req(bob, &parleyv1.SendTypingRequest{ChatId: dm, Typing: true})); err != nil {
			t.Fatalf("SendTyping within the limit: %v", err)
		}
	}
	for range 30 {
		_, err = bob.msgs.SendTyping(ctx, req(bob, &parleyv1.SendTypingRequest{ChatId: dm, Typing: true}))
		if err != nil {
			break
		}
	}
	servertest.WantCode(t, err, connect.CodeResourceExhausted)
}

func TestPresence(t *testing.T) {
	srv := servertest.New(t)
	p := servertest.Protocols[1]
	alice, bob, stranger := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
	private(t, alice, bob)
	aliceStream := subscribe(t, alice, "")
	aliceStream.presence = true
	ctx := context.Background()

	presence := func(u *user, of ...*user) map[int32]*parleyv1.Presence {
		t.Helper()
		res, err := u.live.GetPresence(ctx, req(u, &parleyv1.GetPresenceRequest{UserIds: ids(of...)}))
		if err != nil {
			t.Fatalf("GetPresence: %v", err)
		}
		out := map[int32]*parleyv1.Presence{}
		for _, p := range res.Msg.GetPresences() {
			out[p.GetUserId()] = p
		}
		return out
	}
	if got := presence(alice, bob)[bob.id]; got == nil || got.GetOnline() || got.GetLastSeen() != nil {
		t.Fatalf("bob before his first stream: %v, want offline, never seen", got)
	}

	bobStream := subscribe(t, bob, "")
	ev := aliceStream.next().GetPresence()
	if ev.GetUserId() != bob.id || !ev.GetOnline() {
		t.Fatalf("alice got %v, want bob online", ev)
	}
	got := presence(alice, bob, stranger, alice)
	if !got[bob.id].GetOnline() || !got[alice.id].GetOnline() {
		t.Fatalf("presence = %v, want bob and alice online", got)
	}
	if _, ok := got[stranger.id]; ok {
		t.Fatal("the presence of a user who shares no chat was answered")
	}

	// A second device keeps bob online when the first closes.
	second := subscribe(t, bob, "")
	bobStream.close()
	second.close()
	before := time.Now()
	ev = aliceStream.next().GetPresence()
	if ev.GetUserId() != bob.id || ev.GetOnline() || ev.GetLastSeen() == nil {
		t.Fatalf("alice got %v, want bob offline with a last-seen time", ev)
	}
	if seen := presence(alice, bob)[bob.id]; seen.GetOnline() || seen.GetLastSeen().AsTime().After(time.Now()) ||
		seen.GetLastSeen().AsTime().Before(before.Add(-time.Minute)) {
		t.Fatalf("bob after leaving: %v", seen)
	}
	_, err := alice.live.GetPresence(ctx, req(alice, &parleyv1.GetPresenceRequest{}))
	servertest.WantCode(t, err, connect.CodeInvalidArgument)
}

// A user whose instance died without saying goodbye goes offline when
// its presence expires, announced by a surviving instance.
func TestPresence_InstanceDies(t *testing.T) {
	servertest.SkipOnRedisCluster(t, "a proxy in front of one node cannot cut an instance off the cluster, whose other nodes it reaches directly")
	fast := servertest.WithConfig(func(c *app.Config) { c.Live.Heartbeat = 100 * time.Millisecond })
	survivor := servertest.New(t, fast)
	p := servertest.Protocols[0]
	alice, bob := newUser(t, survivor, p), newUser(t, survivor, p)
	private(t, alice, bob)
	aliceStream := subscribe(t, alice, "")
	aliceStream.presence = true

	// Bob's instance reaches Redis through a proxy; cutting it leaves the
	// instance unable to renew bob's presence or say goodbye, as if it
	// had crashed.
	u, err := url.Parse(servertest.SharedStores(t).RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := servertest.NewProxy(t, u.Host)
	doomed := servertest.New(t, fast, servertest.WithConfig(func(c *app.Config) {
		c.RedisURL = "redis://" + proxy.Addr() + u.Path
	}))
	bobStream := subscribe(t, bob.on(doomed, p), "")
	if ev := aliceStream.next().GetPresence(); ev.GetUserId() != bob.id || !ev.GetOnline() {
		t.Fatalf("alice got %v, want bob online", ev)
	}
	proxy.Break()
	bobStream.close()
	ev := aliceStream.next().GetPresence()
	if ev.GetUserId() != bob.id || ev.GetOnline() || ev.GetLastSeen() == nil {
		t.Fatalf("alice got %v, want bob offline", ev)
	}
	proxy.Restore()
}

func TestSubscribe_Heartbeat(t *testing.T) {
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) { c.Live.Heartbeat = 50 * time.Millisecond }))
	p := servertest.Protocols[2]
	u := newUser(t, srv, p)
	s := subscribe(t, u, "")
	for n := 0; n < 3; {
		if !s.s.Receive() {
			t.Fatalf("stream ended: %v", s.s.Err())
		}
		if s.s.Msg().GetEvent().GetHeartbeat() != nil {
			n++
		}
	}
}

// On shutdown streams end cleanly, and the client resumes elsewhere.
func TestSubscribe_Shutdown(t *testing.T) {
	a, b := servertest.New(t), servertest.New(t)
	p := servertest.Protocols[0]
	alice, bob := newUser(t, b, p), newUser(t, b, p)
	dm := private(t, alice, bob)
	s := subscribe(t, bob.on(a, p), "")
	if err := a.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := s.tryNext(); err != errEnded {
		t.Fatalf("after shutdown: %v, want a clean end of stream", err)
	}
	send(t, alice, dm, "while away")
	if m := subscribe(t, bob.on(b, p), s.cursor).message(); m.GetText() != "while away" {
		t.Fatalf("resumed on the other instance and got %q", m.GetText())
	}
}
