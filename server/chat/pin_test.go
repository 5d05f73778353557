package chat_test

import (
	"context"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

// pin pins the message as u and returns it as answered.
func pin(t testing.TB, u *user, chatID, messageID string) *parleyv1.Message {
	t.Helper()
	res, err := u.msgs.PinMessage(context.Background(), req(u, &parleyv1.PinMessageRequest{ChatId: chatID, MessageId: messageID}))
	if err != nil {
		t.Fatalf("PinMessage: %v", err)
	}
	return res.Msg.GetMessage()
}

func tryPin(u *user, chatID, messageID string) error {
	_, err := u.msgs.PinMessage(context.Background(), req(u, &parleyv1.PinMessageRequest{ChatId: chatID, MessageId: messageID}))
	return err
}

// unpin unpins the message as u and returns it as answered.
func unpin(t testing.TB, u *user, chatID, messageID string) *parleyv1.Message {
	t.Helper()
	res, err := u.msgs.UnpinMessage(context.Background(), req(u, &parleyv1.UnpinMessageRequest{ChatId: chatID, MessageId: messageID}))
	if err != nil {
		t.Fatalf("UnpinMessage: %v", err)
	}
	return res.Msg.GetMessage()
}

func tryUnpin(u *user, chatID, messageID string) error {
	_, err := u.msgs.UnpinMessage(context.Background(), req(u, &parleyv1.UnpinMessageRequest{ChatId: chatID, MessageId: messageID}))
	return err
}

// pinned lists the chat's pinned messages as u sees them.
func pinned(t testing.TB, u *user, chatID string) []*parleyv1.Message {
	t.Helper()
	res, err := u.msgs.ListPinnedMessages(context.Background(), req(u, &parleyv1.ListPinnedMessagesRequest{ChatId: chatID}))
	if err != nil {
		t.Fatalf("ListPinnedMessages: %v", err)
	}
	return res.Msg.GetMessages()
}

// wantPinned fails unless the chat's pinned messages are want, in order.
func wantPinned(t testing.TB, u *user, chatID string, want ...*parleyv1.Message) {
	t.Helper()
	var got, wantIDs []string
	for _, m := range pinned(t, u, chatID) {
		got = append(got, m.GetText())
		if m.GetPin() == nil {
			t.Errorf("listed pinned message %q has no pin", m.GetText())
		}
	}
	for _, m := range want {
		wantIDs = append(wantIDs, m.GetText())
	}
	if !slices.Equal(got, wantIDs) {
		t.Fatalf("pinned messages = %q, want %q", got, wantIDs)
	}
}

// pinsInList returns who pinned each message of the chat, as ListMessages
// shows it (0: not pinned), by text.
func pinsInList(t *testing.T, u *user, chatID string) map[string]int32 {
	t.Helper()
	out := map[string]int32{}
	for _, m := range listAll(t, u, chatID) {
		out[m.GetText()] = m.GetPin().GetPinnedBy()
	}
	return out
}

func TestPins_PinUnpinList(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			t.Run("private", func(t *testing.T) {
				a, b := newUser(t, srv, p), newUser(t, srv, p)
				id := servertest.PrivateChat(t, a.chats, a.token, b.id).GetId()
				m1 := send(t, a, id, "one")
				m2 := send(t, b, id, "two")
				before := getChat(t, a, id).GetUpdatedAt().AsTime()

				got := pin(t, a, id, m1.GetId())
				if got.GetId() != m1.GetId() || got.GetPin().GetPinnedBy() != a.id || got.GetPin().GetPinnedAt() == nil {
					t.Fatalf("pinned message = %v, want %s pinned by %d", got, m1.GetId(), a.id)
				}
				if got := pin(t, b, id, m2.GetId()).GetPin().GetPinnedBy(); got != b.id {
					t.Fatalf("pinned by %d, want %d", got, b.id)
				}
				// Pinning again changes nothing: the first pin stays.
				if got := pin(t, b, id, m1.GetId()).GetPin(); got.GetPinnedBy() != a.id {
					t.Fatalf("pinned again: pin = %v, want the first, by %d", got, a.id)
				}
				wantPinned(t, b, id, m2, m1)
				if got, want := pinsInList(t, b, id), map[string]int32{"one": a.id, "two": b.id}; !maps.Equal(got, want) {
					t.Fatalf("pins in ListMessages = %v, want %v", got, want)
				}
				if after := getChat(t, a, id).GetUpdatedAt().AsTime(); !after.Equal(before) {
					t.Errorf("updatedAt moved from %v to %v on pins; want it unchanged", before, after)
				}

				if got := unpin(t, b, id, m1.GetId()); got.GetPin() != nil || got.GetId() != m1.GetId() {
					t.Fatalf("unpinned message = %v, want %s without a pin", got, m1.GetId())
				}
				if got := unpin(t, a, id, m1.GetId()); got.GetPin() != nil {
					t.Fatalf("unpinned again: %v, want no pin", got)
				}
				wantPinned(t, a, id, m2)
			})

			t.Run("group", func(t *testing.T) {
				admin, member := newUser(t, srv, p), newUser(t, srv, p)
				id := group(t, admin, "pins", member).GetId()
				m1, m2, m3 := send(t, member, id, "one"), send(t, admin, id, "two"), send(t, member, id, "three")

				wantCode(t, tryPin(member, id, m1.GetId()), connect.CodePermissionDenied)
				for _, m := range []*parleyv1.Message{m1, m2, m3} {
					pin(t, admin, id, m.GetId())
				}
				wantCode(t, tryUnpin(member, id, m1.GetId()), connect.CodePermissionDenied)
				wantPinned(t, member, id, m3, m2, m1)
				// Pinned again after an unpin, it is the latest.
				unpin(t, admin, id, m2.GetId())
				wantPinned(t, member, id, m3, m1)
				pin(t, admin, id, m2.GetId())
				wantPinned(t, member, id, m2, m3, m1)

				// A deleted message is unpinned, and cannot be pinned.
				if _, err := member.msgs.DeleteMessage(ctx, req(member, &parleyv1.DeleteMessageRequest{ChatId: id, MessageId: m3.GetId()})); err != nil {
					t.Fatalf("DeleteMessage: %v", err)
				}
				wantPinned(t, admin, id, m2, m1)
				if got := pinsInList(t, admin, id); got[""] != 0 || got["one"] != admin.id || got["two"] != admin.id {
					t.Fatalf("pins in ListMessages = %v, want one and two pinned, the tombstone not", got)
				}
				wantCode(t, tryPin(admin, id, m3.GetId()), connect.CodeFailedPrecondition)
				unpin(t, admin, id, m3.GetId())
				wantPinned(t, admin, id, m2, m1)
			})
		})
	}
}

func TestPins_Authorization(t *testing.T) {
	servertest.SkipOnEmbeddedMongo(t) // the same checks on any store; minutes on FerretDB 1.x
	srv := servertest.New(t)
	ctx := context.Background()
	p := servertest.Protocols[0]
	admin, former, outsider := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
	id := group(t, admin, "g", former).GetId()
	other := group(t, admin, "other").GetId()
	kept, free := send(t, admin, id, "kept"), send(t, admin, id, "free")
	elsewhere := send(t, admin, other, "elsewhere")
	pin(t, admin, id, kept.GetId())
	// An admin, so that only its removal refuses it.
	if _, err := admin.chats.SetParticipantRole(ctx, req(admin, &parleyv1.SetParticipantRoleRequest{ChatId: id, UserId: former.id, Role: parleyv1.Role_ROLE_ADMIN})); err != nil {
		t.Fatalf("SetParticipantRole: %v", err)
	}
	if _, err := admin.chats.RemoveParticipant(ctx, req(admin, &parleyv1.RemoveParticipantRequest{ChatId: id, UserId: former.id})); err != nil {
		t.Fatalf("RemoveParticipant: %v", err)
	}

	for _, u := range []*user{outsider, former} {
		for _, m := range []*parleyv1.Message{kept, free} {
			wantCode(t, tryPin(u, id, m.GetId()), connect.CodeNotFound)
			wantCode(t, tryUnpin(u, id, m.GetId()), connect.CodeNotFound)
		}
		_, err := u.msgs.ListPinnedMessages(ctx, req(u, &parleyv1.ListPinnedMessagesRequest{ChatId: id}))
		wantCode(t, err, connect.CodeNotFound)
	}
	// A message of another chat, and one that never was.
	wantCode(t, tryPin(admin, id, elsewhere.GetId()), connect.CodeNotFound)
	wantCode(t, tryUnpin(admin, id, elsewhere.GetId()), connect.CodeNotFound)
	wantCode(t, tryPin(admin, id, "0123456789abcdef01234567"), connect.CodeNotFound)
	wantCode(t, tryPin(admin, id, "not a message"), connect.CodeInvalidArgument)

	wantPinned(t, admin, id, kept)
	wantPinned(t, admin, other)
}

func TestPins_RaceToLimit(t *testing.T) {
	srv := servertest.New(t)
	p := servertest.Protocols[0]
	admin, member := newUser(t, srv, p), newUser(t, srv, p)
	id := group(t, admin, "full", member).GetId()
	const first, racing = 48, 10
	var msgs []*parleyv1.Message
	for range first + racing {
		msgs = append(msgs, send(t, member, id, servertest.UniqueName("m")))
	}
	for _, m := range msgs[:first] {
		pin(t, admin, id, m.GetId())
	}
	errs := make([]error, racing)
	var wg sync.WaitGroup
	for i, m := range msgs[first:] {
		wg.Go(func() { errs[i] = tryPin(admin, id, m.GetId()) })
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch connect.CodeOf(err) {
		case connect.CodeFailedPrecondition:
		default:
			if err != nil {
				t.Fatalf("PinMessage: %v, want success or failed_precondition", err)
			}
			won++
		}
	}
	if won != 2 {
		t.Fatalf("%d of %d racing pins succeeded, want 2 (errors: %v)", won, racing, errs)
	}
	if got := len(pinned(t, admin, id)); got != 50 {
		t.Fatalf("%d messages pinned, want 50", got)
	}
	// At the limit, pinning a pinned message still changes nothing.
	if err := tryPin(admin, id, msgs[0].GetId()); err != nil {
		t.Errorf("pinning a pinned message at the limit: %v, want success", err)
	}
}

// pinEvents opens u's live stream on srv and returns its pins_changed
// events.
func pinEvents(t *testing.T, srv *servertest.Server, p servertest.Protocol, u *user) <-chan *parleyv1.PinsChanged {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	stream, err := servertest.NewClients(srv, p).Live.Subscribe(ctx, req(u, &parleyv1.SubscribeRequest{}))
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	t.Cleanup(func() { stream.Close() })
	for stream.Receive() && stream.Msg().GetEvent().GetReady() == nil {
	}
	if stream.Err() != nil {
		t.Fatalf("stream: %v", stream.Err())
	}
	out := make(chan *parleyv1.PinsChanged, 10)
	go func() {
		defer close(out)
		for stream.Receive() {
			if ev := stream.Msg().GetEvent().GetPinsChanged(); ev != nil {
				out <- ev
			}
		}
	}()
	return out
}

// wantPinEvent fails unless the next pins_changed event is want.
func wantPinEvent(t *testing.T, events <-chan *parleyv1.PinsChanged, want *parleyv1.PinsChanged) {
	t.Helper()
	var ev *parleyv1.PinsChanged
	select {
	case e, ok := <-events:
		if !ok {
			t.Fatalf("the stream ended before pins_changed %v", want)
		}
		ev = e
	case <-time.After(10 * time.Second):
		t.Fatalf("no pins_changed within 10 s, want %v", want)
	}
	if ev.GetChatId() != want.GetChatId() || ev.GetMessageId() != want.GetMessageId() || ev.GetSeq() != want.GetSeq() ||
		ev.GetPinned() != want.GetPinned() || ev.GetActorId() != want.GetActorId() || ev.GetVersion() != want.GetVersion() {
		t.Fatalf("pins_changed = %v, want %v", ev, want)
	}
}

func TestPins_LiveAcrossInstances(t *testing.T) {
	a, b := servertest.New(t), servertest.New(t)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			alice, bob := newUser(t, a, p), newUser(t, a, p)
			id := servertest.PrivateChat(t, alice.chats, alice.token, bob.id).GetId()
			m := send(t, alice, id, "pin me")
			onB := pinEvents(t, b, p, bob)
			own := pinEvents(t, a, p, alice)
			// Each change raises the chat's pins version.
			ev := &parleyv1.PinsChanged{ChatId: id, MessageId: m.GetId(), Seq: m.GetSeq(), Pinned: true, ActorId: alice.id, Version: 1}

			pin(t, alice, id, m.GetId())
			wantPinEvent(t, onB, ev)
			wantPinEvent(t, own, ev)
			// A second pin, and an unpin of what is not pinned, change
			// nothing but are announced again (a retry's announcement,
			// see TestRetry_AnnouncesWhatTheFailedCallDidNot): the pin
			// by its pinner, each as of the version it read.
			pin(t, bob, id, m.GetId())
			wantPinEvent(t, onB, ev)
			wantPinEvent(t, own, ev)
			unpin(t, bob, id, m.GetId())
			unpin(t, bob, id, m.GetId())
			ev.Pinned, ev.ActorId, ev.Version = false, bob.id, 2
			for range 2 {
				wantPinEvent(t, onB, ev)
				wantPinEvent(t, own, ev)
			}
			// A delete unpins.
			pin(t, bob, id, m.GetId())
			ev.Pinned, ev.Version = true, 3
			wantPinEvent(t, onB, ev)
			if _, err := alice.msgs.DeleteMessage(ctx, req(alice, &parleyv1.DeleteMessageRequest{ChatId: id, MessageId: m.GetId()})); err != nil {
				t.Fatalf("DeleteMessage: %v", err)
			}
			ev.Pinned, ev.ActorId, ev.Version = false, alice.id, 4
			wantPinEvent(t, onB, ev)
		})
	}
}

// TestPins_RacingChangesOrdered: a pin and an unpin of one message made
// at once, through two instances, may announce in any order; the event
// of the highest version tells the message's state as it is stored.
func TestPins_RacingChangesOrdered(t *testing.T) {
	a, b := servertest.New(t), servertest.New(t)
	p := servertest.Protocols[0]
	alice, bob := newUser(t, a, p), newUser(t, b, p)
	id := servertest.PrivateChat(t, alice.chats, alice.token, bob.id).GetId()
	m := send(t, alice, id, "pin me")
	events := pinEvents(t, a, p, alice)
	const rounds = 10
	for round := range rounds {
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := tryPin(alice, id, m.GetId()); err != nil {
				t.Errorf("round %d: PinMessage: %v", round, err)
			}
		})
		wg.Go(func() {
			if err := tryUnpin(bob, id, m.GetId()); err != nil {
				t.Errorf("round %d: UnpinMessage: %v", round, err)
			}
		})
		wg.Wait()
		// The latest, as a client keeps it: the highest version.
		latest := &parleyv1.PinsChanged{}
		for range 2 {
			select {
			case ev := <-events:
				if ev.GetVersion() > latest.GetVersion() {
					latest = ev
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("round %d: no pins_changed within 10 s", round)
			}
		}
		stored := pinsInList(t, alice, id)["pin me"] != 0
		if latest.GetPinned() != stored {
			t.Fatalf("round %d: the highest version's event says pinned %v (version %d); stored: pinned %v",
				round, latest.GetPinned(), latest.GetVersion(), stored)
		}
	}
}
