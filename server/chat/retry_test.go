package chat_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

// A change whose announcement failed is answered UNAVAILABLE, "retry the
// call"; the retry finds the change made and announces it. Redis refuses
// XADD, the append to the users' event logs, during the first call
// only: a Redis of the test's own, whose ACL it changes.
func TestRetry_AnnouncesWhatTheFailedCallDidNot(t *testing.T) {
	rs := servertest.StartRedis(t)
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) { c.RedisURL = rs.URL() }))
	ctx := context.Background()
	p := servertest.Protocols[0]
	alice, bob, carol, dave, erin, frank := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
	grp := group(t, alice, "g", bob, carol)
	// Alice's request to Frank, which Frank's reply accepts.
	request := servertest.PrivateChat(t, alice.chats, alice.token, frank.id)
	pinned := send(t, alice, grp.GetId(), "pin me")
	doomed := send(t, alice, grp.GetId(), "delete me")
	invite, err := alice.chats.CreateInviteLink(ctx, req(alice, &parleyv1.CreateInviteLinkRequest{ChatId: grp.GetId(), UsageLimit: 1}))
	if err != nil {
		t.Fatal(err)
	}
	// Carol watches the group; Erin's private chat with Alice is made
	// in a later case, and Erin watches for it. Erin's invite is good for
	// one join, which the failed call uses.
	carolLive := subscribe(t, srv, p, carol)
	erinLive := subscribe(t, srv, p, erin)
	aliceLive := subscribe(t, srv, p, alice)

	cases := []struct {
		name  string
		call  func() error
		watch *user // whose stream hears of it; a member of grp
		want  func(*parleyv1.Event) bool
	}{{
		// Carol has read nothing: her send moves her positions.
		name: "SendMessage (the sender's positions)",
		call: func() error {
			_, err := carol.msgs.SendMessage(ctx, req(carol, &parleyv1.SendMessageRequest{ChatId: grp.GetId(), ClientMessageId: "positions", Text: "read it all"}))
			return err
		},
		watch: alice,
		want: func(ev *parleyv1.Event) bool {
			pc := ev.GetPositionsChanged()
			return pc.GetChatId() == grp.GetId() && pc.GetUserId() == carol.id
		},
	}, {
		name: "SetParticipantRole",
		call: func() error {
			_, err := alice.chats.SetParticipantRole(ctx, req(alice, &parleyv1.SetParticipantRoleRequest{ChatId: grp.GetId(), UserId: bob.id, Role: parleyv1.Role_ROLE_ADMIN}))
			return err
		},
		watch: carol,
		want: func(ev *parleyv1.Event) bool {
			return slices.Contains(ev.GetRoleChanged().GetUserIds(), bob.id)
		},
	}, {
		name: "AddParticipants",
		call: func() error {
			_, err := alice.chats.AddParticipants(ctx, req(alice, &parleyv1.AddParticipantsRequest{ChatId: grp.GetId(), UserIds: []int32{dave.id}}))
			return err
		},
		watch: carol,
		want: func(ev *parleyv1.Event) bool {
			return slices.Contains(ev.GetMembersAdded().GetUserIds(), dave.id)
		},
	}, {
		name: "JoinChatByInvite",
		call: func() error {
			_, err := erin.chats.JoinChatByInvite(ctx, req(erin, &parleyv1.JoinChatByInviteRequest{Code: invite.Msg.GetInviteLink().GetCode()}))
			return err
		},
		watch: carol,
		want: func(ev *parleyv1.Event) bool {
			return slices.Contains(ev.GetMembersAdded().GetUserIds(), erin.id)
		},
	}, {
		name: "PinMessage",
		call: func() error {
			_, err := alice.msgs.PinMessage(ctx, req(alice, &parleyv1.PinMessageRequest{ChatId: grp.GetId(), MessageId: pinned.GetId()}))
			return err
		},
		watch: carol,
		want: func(ev *parleyv1.Event) bool {
			return ev.GetPinsChanged().GetMessageId() == pinned.GetId() && ev.GetPinsChanged().GetPinned()
		},
	}, {
		name: "UnpinMessage",
		call: func() error {
			_, err := alice.msgs.UnpinMessage(ctx, req(alice, &parleyv1.UnpinMessageRequest{ChatId: grp.GetId(), MessageId: pinned.GetId()}))
			return err
		},
		watch: carol,
		want: func(ev *parleyv1.Event) bool {
			return ev.GetPinsChanged().GetMessageId() == pinned.GetId() && !ev.GetPinsChanged().GetPinned()
		},
	}, {
		name: "AddReaction",
		call: func() error {
			_, err := bob.msgs.AddReaction(ctx, req(bob, &parleyv1.AddReactionRequest{ChatId: grp.GetId(), MessageId: pinned.GetId(), Emoji: "👍"}))
			return err
		},
		watch: carol,
		want: func(ev *parleyv1.Event) bool {
			r := ev.GetReactionsChanged()
			return r.GetMessageId() == pinned.GetId() && r.GetAdded() && len(r.GetReactions()) == 1
		},
	}, {
		name: "RemoveReaction",
		call: func() error {
			_, err := bob.msgs.RemoveReaction(ctx, req(bob, &parleyv1.RemoveReactionRequest{ChatId: grp.GetId(), MessageId: pinned.GetId(), Emoji: "👍"}))
			return err
		},
		watch: carol,
		want: func(ev *parleyv1.Event) bool {
			r := ev.GetReactionsChanged()
			return r.GetMessageId() == pinned.GetId() && !r.GetAdded() && len(r.GetReactions()) == 0
		},
	}, {
		name: "DeleteMessage",
		call: func() error {
			_, err := alice.msgs.DeleteMessage(ctx, req(alice, &parleyv1.DeleteMessageRequest{ChatId: grp.GetId(), MessageId: doomed.GetId()}))
			return err
		},
		watch: carol,
		want: func(ev *parleyv1.Event) bool {
			return ev.GetMessageDeleted().GetMessage().GetId() == doomed.GetId()
		},
	}, {
		name: "CreatePrivateChat",
		call: func() error {
			_, err := alice.chats.CreatePrivateChat(ctx, req(alice, &parleyv1.CreatePrivateChatRequest{PeerId: erin.id}))
			return err
		},
		watch: erin, // a member of grp since JoinChatByInvite
		want: func(ev *parleyv1.Event) bool {
			c := ev.GetChatCreated().GetChat()
			return c.GetType() == parleyv1.ChatType_CHAT_TYPE_PRIVATE && slices.ContainsFunc(c.GetParticipants(), func(p *parleyv1.Participant) bool { return p.GetUserId() == alice.id })
		},
	}, {
		name: "MarkRead",
		call: func() error {
			_, err := bob.msgs.MarkRead(ctx, req(bob, &parleyv1.MarkReadRequest{ChatId: grp.GetId(), UpToSeq: pinned.GetSeq()}))
			return err
		},
		watch: carol,
		want: func(ev *parleyv1.Event) bool {
			p := ev.GetPositionsChanged()
			return p.GetUserId() == bob.id && p.GetReadSeq() == pinned.GetSeq()
		},
	}, {
		name: "SendMessage accepting a request",
		call: func() error {
			_, err := sendReq(frank, &parleyv1.SendMessageRequest{ChatId: request.GetId(), ClientMessageId: "accepting", Text: "hi Alice"})
			return err
		},
		watch: alice,
		want: func(ev *parleyv1.Event) bool {
			c := ev.GetChatUpdated().GetChat()
			return c.GetId() == request.GetId() && c.GetRequest() == nil
		},
	}, {
		name: "RemoveParticipant",
		call: func() error {
			_, err := alice.chats.RemoveParticipant(ctx, req(alice, &parleyv1.RemoveParticipantRequest{ChatId: grp.GetId(), UserId: dave.id}))
			return err
		},
		watch: carol,
		want: func(ev *parleyv1.Event) bool {
			return slices.Contains(ev.GetMemberRemoved().GetUserIds(), dave.id)
		},
	}, {
		name: "LeaveChat",
		call: func() error {
			_, err := bob.chats.LeaveChat(ctx, req(bob, &parleyv1.LeaveChatRequest{ChatId: grp.GetId()}))
			return err
		},
		watch: carol,
		want: func(ev *parleyv1.Event) bool {
			return slices.Contains(ev.GetMemberRemoved().GetUserIds(), bob.id)
		},
	}, {
		name: "CreateGroupChat",
		call: func() error {
			_, err := alice.chats.CreateGroupChat(ctx, req(alice, &parleyv1.CreateGroupChatRequest{Name: "made once", MemberIds: []int32{carol.id}, RequestId: "d5c0b1e4-made-once"}))
			return err
		},
		watch: carol,
		want: func(ev *parleyv1.Event) bool {
			return ev.GetChatCreated().GetChat().GetName() == "made once"
		},
	}}
	streams := map[*user]*connect.ServerStreamForClient[parleyv1.SubscribeResponse]{carol: carolLive, erin: erinLive, alice: aliceLive}
	for _, tc := range cases {
		rs.ACL("-xadd")
		err := tc.call()
		rs.ACL("+xadd")
		wantCode(t, err, connect.CodeUnavailable)
		if err := tc.call(); err != nil {
			t.Fatalf("%s, retried: %v", tc.name, err)
		}
		// A message sent after the retry: the event comes before it,
		// once (the failed call logged nothing).
		if seen := heardBefore(t, streams[tc.watch], alice, grp.GetId(), tc.want); seen != 1 {
			t.Errorf("%s: the watcher heard of the change %d times before the next message, want 1", tc.name, seen)
		}
	}
	list, err := carol.chats.ListChats(ctx, req(carol, &parleyv1.ListChatsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	made := 0
	for _, c := range list.Msg.GetChats() {
		if c.GetName() == "made once" {
			made++
		}
	}
	if made != 1 {
		t.Errorf("CreateGroupChat with one request id, called twice, made %d groups, want 1", made)
	}
}

// A departure whose announcement failed is kept for ten minutes: the
// same caller's retry within them answers OK (and announces it); once
// announced, after them, for another caller, and for one that never was
// a member, the answer is NOT_FOUND.
func TestRetry_LeaveWithinTenMinutes(t *testing.T) {
	rs := servertest.StartRedis(t)
	clock := servertest.NewClock()
	srv := servertest.New(t, servertest.WithConfig(func(cfg *app.Config) {
		cfg.RedisURL = rs.URL()
		cfg.Now = clock.Now
	}))
	ctx := context.Background()
	p := servertest.Protocols[0]
	alice, bob, carol, dave, erin, frank := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
	grp := group(t, alice, "g", bob, carol, dave, erin)
	leave := func(u *user) error {
		_, err := u.chats.LeaveChat(ctx, req(u, &parleyv1.LeaveChatRequest{ChatId: grp.GetId()}))
		return err
	}
	remove := func(u *user) error {
		_, err := alice.chats.RemoveParticipant(ctx, req(alice, &parleyv1.RemoveParticipantRequest{ChatId: grp.GetId(), UserId: u.id}))
		return err
	}
	unannounced := func(call func() error) {
		t.Helper()
		rs.ACL("-xadd")
		err := call()
		rs.ACL("+xadd")
		wantCode(t, err, connect.CodeUnavailable)
	}

	unannounced(func() error { return leave(bob) })
	unannounced(func() error { return remove(carol) })
	// Only what the caller did is retried: Carol was removed, Bob left.
	wantCode(t, leave(carol), connect.CodeNotFound)
	wantCode(t, remove(bob), connect.CodeNotFound)
	if err := leave(bob); err != nil {
		t.Fatalf("LeaveChat, retried: %v", err)
	}
	if err := remove(carol); err != nil {
		t.Fatalf("RemoveParticipant, retried: %v", err)
	}
	// Announced now: no more.
	wantCode(t, leave(bob), connect.CodeNotFound)
	wantCode(t, remove(carol), connect.CodeNotFound)
	if err := leave(erin); err != nil {
		t.Fatal(err)
	}
	wantCode(t, leave(erin), connect.CodeNotFound)
	wantCode(t, leave(frank), connect.CodeNotFound)
	wantCode(t, remove(frank), connect.CodeNotFound)

	unannounced(func() error { return leave(dave) })
	clock.Advance(10*time.Minute + time.Second)
	wantCode(t, leave(dave), connect.CodeNotFound)
	if n := len(getChat(t, alice, grp.GetId()).GetParticipants()); n != 1 {
		t.Errorf("the group has %d members, want 1", n)
	}
}

// A mark repeated once its positions are announced (another device's, a
// client's repeat) announces nothing: only a mark whose announcement
// failed is announced again (see TestRetry_AnnouncesWhatTheFailedCallDidNot).
func TestRetry_RepeatedMarkAnnouncesNothing(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	p := servertest.Protocols[0]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	grp := group(t, alice, "g", bob)
	m := send(t, alice, grp.GetId(), "read me")
	live := subscribe(t, srv, p, alice)
	for range 3 {
		if _, err := bob.msgs.MarkRead(ctx, req(bob, &parleyv1.MarkReadRequest{ChatId: grp.GetId(), UpToSeq: m.GetSeq()})); err != nil {
			t.Fatal(err)
		}
	}
	if seen := heardBefore(t, live, alice, grp.GetId(), positionsOf(bob)); seen != 1 {
		t.Errorf("three marks of the same message announced Bob's positions %d times, want 1", seen)
	}
}

// An addition or a join is announced again only by a retry of the call
// that made it, while its announcement may have failed: another
// AddParticipants of a member, or its join by an invite again, answers
// OK and announces nothing (see TestRetry_AnnouncesWhatTheFailedCallDidNot
// for the retries).
func TestRetry_ArrivalsAnnouncedOnce(t *testing.T) {
	rs := servertest.StartRedis(t)
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) { c.RedisURL = rs.URL() }))
	ctx := context.Background()
	p := servertest.Protocols[0]
	alice, bob, carol, dave, erin := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
	grp := group(t, alice, "g", bob)
	if _, err := alice.chats.SetParticipantRole(ctx, req(alice, &parleyv1.SetParticipantRoleRequest{ChatId: grp.GetId(), UserId: bob.id, Role: parleyv1.Role_ROLE_ADMIN})); err != nil {
		t.Fatal(err)
	}
	invite, err := alice.chats.CreateInviteLink(ctx, req(alice, &parleyv1.CreateInviteLinkRequest{ChatId: grp.GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	add := func(by *user, u *user) error {
		_, err := by.chats.AddParticipants(ctx, req(by, &parleyv1.AddParticipantsRequest{ChatId: grp.GetId(), UserIds: []int32{u.id}}))
		return err
	}
	join := func(u *user) error {
		_, err := u.chats.JoinChatByInvite(ctx, req(u, &parleyv1.JoinChatByInviteRequest{Code: invite.Msg.GetInviteLink().GetCode()}))
		return err
	}
	live := subscribe(t, srv, p, alice)
	// announced counts the arrivals of u that alice hears of before the
	// next message.
	announced := func(u *user) int {
		t.Helper()
		return heardBefore(t, live, bob, grp.GetId(), func(ev *parleyv1.Event) bool {
			return ev.GetMembersAdded() != nil && slices.Contains(ev.GetMembersAdded().GetUserIds(), u.id)
		})
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	must(add(alice, carol))
	if n := announced(carol); n != 1 {
		t.Fatalf("Carol's addition announced %d times, want 1", n)
	}
	must(add(alice, carol))
	must(add(bob, carol))
	must(join(carol))
	if n := announced(carol); n != 0 {
		t.Errorf("Carol, a member, added again and joining: announced %d times, want 0", n)
	}
	must(join(dave))
	must(join(dave))
	must(add(alice, dave))
	if n := announced(dave); n != 1 {
		t.Errorf("Dave joined, then joined and was added again: announced %d times, want 1", n)
	}
	// An addition whose announcement failed: another admin's call does
	// not announce it; the retry of the call that made it does, once.
	rs.ACL("-xadd")
	err = add(alice, erin)
	rs.ACL("+xadd")
	wantCode(t, err, connect.CodeUnavailable)
	must(add(bob, erin))
	must(add(alice, erin))
	must(add(alice, erin))
	if n := announced(erin); n != 1 {
		t.Errorf("Erin's addition, retried: announced %d times, want 1", n)
	}
}

// A send repeated once it and the sender's positions are announced (a
// client's retry after a lost answer) announces the positions no more.
func TestRetry_RepeatedSendAnnouncesNoPositions(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	p := servertest.Protocols[0]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	grp := group(t, alice, "g", bob)
	send(t, alice, grp.GetId(), "unread")
	live := subscribe(t, srv, p, alice)
	// Bob had not read Alice's message: his send announces his
	// positions, once.
	for range 2 {
		if _, err := bob.msgs.SendMessage(ctx, req(bob, &parleyv1.SendMessageRequest{ChatId: grp.GetId(), ClientMessageId: "once", Text: "read it"})); err != nil {
			t.Fatal(err)
		}
	}
	if seen := heardBefore(t, live, alice, grp.GetId(), positionsOf(bob)); seen != 1 {
		t.Errorf("a send and its repeat announced Bob's positions %d times, want 1", seen)
	}
}

// heardBefore sends a message to the chat as sender and counts the
// events of the stream that match, up to that message's: what the
// stream heard of the calls made before it.
func heardBefore(t *testing.T, stream *connect.ServerStreamForClient[parleyv1.SubscribeResponse], sender *user, chatID string, match func(*parleyv1.Event) bool) int {
	t.Helper()
	marker := send(t, sender, chatID, "marker")
	seen := 0
	nextEvent(t, stream, func(ev *parleyv1.Event) bool {
		if match(ev) {
			seen++
		}
		return ev.GetMessageCreated().GetMessage().GetId() == marker.GetId()
	})
	return seen
}

// positionsOf matches the events of u's positions.
func positionsOf(u *user) func(*parleyv1.Event) bool {
	return func(ev *parleyv1.Event) bool { return ev.GetPositionsChanged().GetUserId() == u.id }
}

// TestRetry_SendStoredBeforeABlock: a send stored but not announced (the
// event log refused the append), retried after the other member blocked
// the sender, completes: it is announced, and answered with the stored
// message; a new send is refused.
func TestRetry_SendStoredBeforeABlock(t *testing.T) {
	rs := servertest.StartRedis(t)
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) { c.RedisURL = rs.URL() }))
	ctx := context.Background()
	p := servertest.Protocols[0]
	alice, bob := newUser(t, srv, p), newUser(t, srv, p)
	dm := servertest.PrivateChat(t, alice.chats, alice.token, bob.id).GetId()
	servertest.AcceptRequest(t, bob.chats, bob.token, dm)
	aliceLive := subscribe(t, srv, p, alice)
	sendAs := func(key string) (*parleyv1.Message, error) {
		res, err := alice.msgs.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{ChatId: dm, ClientMessageId: key, Text: "before the block"}))
		if err != nil {
			return nil, err
		}
		return res.Msg.GetMessage(), nil
	}
	rs.ACL("-xadd")
	_, err := sendAs("k1")
	rs.ACL("+xadd")
	wantCode(t, err, connect.CodeUnavailable)
	privacy := servertest.Client(srv, p, parleyv1connect.NewPrivacyServiceClient)
	if _, err := privacy.BlockUser(ctx, req(bob, &parleyv1.BlockUserRequest{UserId: alice.id})); err != nil {
		t.Fatalf("BlockUser: %v", err)
	}
	stored, err := sendAs("k1")
	if err != nil {
		t.Fatalf("the retry: %v", err)
	}
	ev := nextEvent(t, aliceLive, func(ev *parleyv1.Event) bool { return ev.GetMessageCreated() != nil })
	if got := ev.GetMessageCreated().GetMessage(); got.GetId() != stored.GetId() {
		t.Errorf("alice's devices heard of %s, want the stored %s", got.GetId(), stored.GetId())
	}
	if got := getChat(t, alice, dm).GetLastMessage().GetMessageId(); got != stored.GetId() {
		t.Errorf("the chat's last message is %q, want the stored %s", got, stored.GetId())
	}
	_, err = sendAs("k2")
	wantCode(t, err, connect.CodePermissionDenied)
}
